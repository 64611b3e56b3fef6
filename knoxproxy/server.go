package knoxproxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/knoxcall/dbproxy/credsource"
	"github.com/knoxcall/dbproxy/peercred"
)

// ErrShutdownTimeout is returned by Serve when sessions were still open after the shutdown
// timeout and had to be closed.
var ErrShutdownTimeout = errors.New("sessions still open at the shutdown timeout were closed")

// Config is what Serve needs.
type Config struct {
	// Routes are the listeners to run. At least one is required.
	Routes []Route
	// Credentials supplies each route's secret. Required. Wrap it in a credsource.Cache:
	// Serve calls Fetch once per session, and calls Invalidate, when the source has it,
	// before re-fetching credentials that the upstream rejected.
	Credentials credsource.Source
	// PeerChecker identifies the process behind each accepted connection. Nil means the
	// platform's default (peercred.New); on platforms without one, routes with AllowedUIDs
	// reject every connection.
	PeerChecker peercred.Checker
	// Logger receives lifecycle, session and refusal lines. Nil means no logging.
	Logger *slog.Logger
	// ShutdownTimeout is how long live sessions may run after the context given to Serve
	// ends. Zero means DefaultShutdownTimeout.
	ShutdownTimeout time.Duration
	// Dial connects to an upstream. Nil means a net.Dialer. Tests replace it.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
}

// Server runs the routes of a Config. Create it with New.
type Server struct {
	cfg    Config
	log    *slog.Logger
	routes []*routeServer
	ready  chan struct{}

	mu       sync.Mutex
	sessions map[*session]struct{}
	wg       sync.WaitGroup
}

// New validates cfg and returns a Server that is not yet listening.
func New(cfg Config) (*Server, error) {
	if len(cfg.Routes) == 0 {
		return nil, errors.New("no routes configured")
	}
	if cfg.Credentials == nil {
		return nil, errors.New("no credential source configured")
	}
	names := make(map[string]bool)
	for i := range cfg.Routes {
		r := &cfg.Routes[i]
		if err := r.Validate(); err != nil {
			return nil, err
		}
		if names[r.Name] {
			return nil, fmt.Errorf("route %q: name: used by another route", r.Name)
		}
		names[r.Name] = true
	}
	if cfg.PeerChecker == nil {
		cfg.PeerChecker = defaultPeerChecker()
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = DefaultShutdownTimeout
	}
	if cfg.Dial == nil {
		var d net.Dialer
		cfg.Dial = d.DialContext
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{cfg: cfg, log: log, ready: make(chan struct{}), sessions: make(map[*session]struct{})}, nil
}

// Serve runs cfg's routes until ctx ends; see Server.Serve.
func Serve(ctx context.Context, cfg Config) error {
	s, err := New(cfg)
	if err != nil {
		return err
	}
	return s.Serve(ctx)
}

// Ready is closed once every listener is bound.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Addr returns the TCP address bound for the named route, or nil before Ready or for an
// unknown route.
func (s *Server) Addr(route string) net.Addr {
	select {
	case <-s.ready:
	default:
		return nil
	}
	for _, rs := range s.routes {
		if rs.route.Name == route {
			return rs.tcp.Addr()
		}
	}
	return nil
}

// Serve binds every route's listeners, or none of them if any fails, and serves sessions
// until ctx ends. It then stops accepting, lets live sessions finish for up to the shutdown
// timeout, and closes those still open, returning ErrShutdownTimeout if there were any.
func (s *Server) Serve(ctx context.Context) error {
	if err := s.bindAll(ctx); err != nil {
		return err
	}
	close(s.ready)

	var accepting sync.WaitGroup
	for _, rs := range s.routes {
		for _, ln := range rs.listeners() {
			accepting.Add(1)
			go func() {
				defer accepting.Done()
				s.acceptLoop(ctx, rs, ln)
			}()
		}
	}

	<-ctx.Done()
	s.log.Info("shutting down: no longer accepting connections", "open_sessions", s.openSessions())
	for _, rs := range s.routes {
		rs.close()
	}
	accepting.Wait()
	return s.drain()
}

// drain waits for live sessions up to the shutdown timeout, then closes the rest.
func (s *Server) drain() error {
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	timer := time.NewTimer(s.cfg.ShutdownTimeout)
	defer timer.Stop()
	select {
	case <-done:
		s.log.Info("shutdown complete: all sessions ended")
		return nil
	case <-timer.C:
	}

	s.mu.Lock()
	n := len(s.sessions)
	for sess := range s.sessions {
		sess.abort()
	}
	s.mu.Unlock()
	s.log.Warn("shutdown timeout reached: closing open sessions", "sessions", n, "timeout", s.cfg.ShutdownTimeout)
	<-done
	return fmt.Errorf("%w (%d sessions)", ErrShutdownTimeout, n)
}

func (s *Server) openSessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

func (s *Server) bindAll(ctx context.Context) error {
	for i := range s.cfg.Routes {
		rs, err := s.bind(ctx, &s.cfg.Routes[i])
		if err != nil {
			for _, bound := range s.routes {
				bound.close()
			}
			s.routes = nil
			return err
		}
		s.routes = append(s.routes, rs)
	}
	return nil
}

// routeServer is a route with its listeners and upstream TLS configuration.
type routeServer struct {
	route    *Route
	proto    protocol
	tls      *tls.Config
	tcp      net.Listener
	unix     net.Listener
	refusals refusalLimiter
}

func (rs *routeServer) listeners() []net.Listener {
	if rs.unix != nil {
		return []net.Listener{rs.tcp, rs.unix}
	}
	return []net.Listener{rs.tcp}
}

func (rs *routeServer) close() {
	for _, ln := range rs.listeners() {
		ln.Close()
	}
}

func (s *Server) bind(ctx context.Context, r *Route) (*routeServer, error) {
	tlsConfig, err := r.upstreamTLSConfig()
	if err != nil {
		return nil, err
	}
	ip, err := r.resolveListenIP(ctx)
	if err != nil {
		return nil, err
	}
	rs := &routeServer{route: r, proto: protocols[r.Protocol], tls: tlsConfig}
	if rs.proto.handshake == nil {
		return nil, fmt.Errorf("route %q: protocol %s is not implemented in this build", r.Name, r.Protocol)
	}

	rs.tcp, err = listenTCP(r, ip)
	if err != nil {
		return nil, err
	}
	// Check what was really bound, in case the address resolved differently.
	if bound, ok := rs.tcp.Addr().(*net.TCPAddr); !ok || !bound.IP.IsLoopback() {
		rs.tcp.Close()
		return nil, fmt.Errorf("route %q: bound %s: %w", r.Name, rs.tcp.Addr(), ErrNotLoopback)
	}
	if r.UnixSocket != "" {
		rs.unix, err = listenUnix(r)
		if err != nil {
			rs.tcp.Close()
			return nil, err
		}
	}

	attrs := []any{"route", r.Name, "protocol", r.Protocol, "listen", rs.tcp.Addr().String(),
		"upstream", r.upstreamAddr()}
	if r.UnixSocket != "" {
		attrs = append(attrs, "unix_socket", r.UnixSocket)
	}
	if len(r.AllowedUIDs) > 0 {
		attrs = append(attrs, "allowed_uids", r.AllowedUIDs)
	}
	s.log.Info("route listening", attrs...)
	if r.TLS.InsecureSkipVerify {
		s.log.Warn("upstream certificate verification is off for this route: development only",
			"route", r.Name, "upstream", r.upstreamAddr())
	}
	return rs, nil
}

func listenTCP(r *Route, ip netip.Addr) (net.Listener, error) {
	if r.LocalPort != 0 {
		ln, err := net.Listen("tcp", net.JoinHostPort(ip.String(), strconv.Itoa(r.LocalPort)))
		if err != nil {
			return nil, fmt.Errorf("route %q: listen: %w", r.Name, err)
		}
		return ln, nil
	}
	ports := portRanges[r.Protocol]
	for port := ports[0]; port <= ports[1]; port++ {
		ln, err := net.Listen("tcp", net.JoinHostPort(ip.String(), strconv.Itoa(port)))
		if err == nil {
			return ln, nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("route %q: listen: %w", r.Name, err)
		}
	}
	return nil, fmt.Errorf("route %q: local_port: every port from %d to %d is in use; set local_port",
		r.Name, ports[0], ports[1])
}

func listenUnix(r *Route) (net.Listener, error) {
	// A socket file left behind by an earlier run is removed; any other file is not.
	if st, err := os.Lstat(r.UnixSocket); err == nil {
		if st.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("route %q: unix_socket %s exists and is not a socket", r.Name, r.UnixSocket)
		}
		os.Remove(r.UnixSocket)
	}
	mode := r.UnixSocketMode
	if mode == 0 {
		mode = 0o600
	}
	// Until the chmod, the socket has the umask's mode (0755 under the usual 022), which
	// gives no other user the write permission that connect(2) needs.
	ln, err := net.Listen("unix", r.UnixSocket)
	if err != nil {
		return nil, fmt.Errorf("route %q: unix_socket: %w", r.Name, err)
	}
	if err := os.Chmod(r.UnixSocket, mode); err != nil {
		ln.Close()
		return nil, fmt.Errorf("route %q: unix_socket: %w", r.Name, err)
	}
	return ln, nil
}

func (s *Server) acceptLoop(ctx context.Context, rs *routeServer, ln net.Listener) {
	var delay time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors, for example: back off instead of spinning.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Error("accept failed", "route", rs.route.Name, "err", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		sess := s.newSession(rs, conn)
		go sess.run(ctx)
	}
}
