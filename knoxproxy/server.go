package knoxproxy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/knoxcall/dbproxy/credsource"
	"github.com/knoxcall/dbproxy/peercred"
)

// ErrShutdownTimeout is returned (wrapped) by Serve when sessions were still open after the
// shutdown timeout and had to be closed.
var ErrShutdownTimeout = errors.New("shutdown timeout reached")

// Config is the configuration of a Server.
type Config struct {
	// Routes are the listeners to run. At least one is required.
	Routes []Route
	// Credentials supplies each route's secret. Required. Wrap it in a credsource.Cache:
	// Serve calls Fetch once per session, and after the upstream rejected credentials it
	// calls the source's Refresh method, or Invalidate and then Fetch, when it has them.
	Credentials credsource.Source
	// PeerChecker identifies the process behind each accepted connection. Nil means
	// &peercred.Kernel{}, which finds the UID of TCP peers but not their PID. On platforms
	// without a peer lookup, routes with AllowedUIDs then reject every connection.
	PeerChecker peercred.Checker
	// Logger receives lifecycle, session and refusal lines. Nil means no logging.
	Logger *slog.Logger
	// Observer receives session events, for metrics. Nil means none.
	Observer Observer
	// ShutdownTimeout is how long live sessions may run after the context given to Serve
	// ends. Zero means DefaultShutdownTimeout.
	ShutdownTimeout time.Duration
	// MaxLogins is the most sessions, across all routes, that may be in their login phase
	// (from accept to the start of the splice) at once. A connection beyond it gets its
	// protocol's too-many-connections error, as over a route's MaxConnections. Zero means
	// DefaultMaxLogins.
	MaxLogins int
	// Dial connects to an upstream. Nil means a net.Dialer. Tests replace it.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
}

// Server runs the routes of a Config. Create it with New.
type Server struct {
	cfg   Config
	log   *slog.Logger
	ready chan struct{}

	// updateMu serialises Serve's start and Update.
	updateMu sync.Mutex
	// serveCtx is Serve's context, set once the routes are bound; Update needs it to start
	// accept loops.
	serveCtx context.Context

	// logins counts the sessions in their login phase, against cfg.MaxLogins.
	logins atomic.Int64

	mu       sync.Mutex
	routes   map[string]*routeServer
	sessions map[*session]struct{}
	draining bool
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
	if err := ValidateRoutes(cfg.Routes); err != nil {
		return nil, err
	}
	if cfg.PeerChecker == nil {
		cfg.PeerChecker = defaultPeerChecker()
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = DefaultShutdownTimeout
	}
	if cfg.MaxLogins <= 0 {
		cfg.MaxLogins = DefaultMaxLogins
	}
	if cfg.Dial == nil {
		var d net.Dialer
		cfg.Dial = d.DialContext
	}
	if cfg.Observer == nil {
		cfg.Observer = nopObserver{}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg.Routes = append([]Route(nil), cfg.Routes...)
	return &Server{
		cfg:      cfg,
		log:      log,
		ready:    make(chan struct{}),
		routes:   make(map[string]*routeServer),
		sessions: make(map[*session]struct{}),
	}, nil
}

// ValidateRoutes checks each route with Validate, then that no two routes share a name, a
// listen address and port, or a Unix socket path. New and Update make the same checks.
func ValidateRoutes(routes []Route) error {
	type listenKey struct {
		addr string
		port int
	}
	names := make(map[string]bool)
	listens := make(map[listenKey]string)
	sockets := make(map[string]string)
	for i := range routes {
		r := &routes[i]
		if err := r.Validate(); err != nil {
			return err
		}
		if names[r.Name] {
			return fmt.Errorf("route %q: name: used by another route", r.Name)
		}
		names[r.Name] = true
		if r.LocalPort != 0 {
			key := listenKey{cmp.Or(r.ListenAddress, "127.0.0.1"), r.LocalPort}
			if other, ok := listens[key]; ok {
				return fmt.Errorf("route %q: local_port: %s port %d is already the listener of route %q (give each route its own port)",
					r.Name, key.addr, key.port, other)
			}
			listens[key] = r.Name
		}
		if r.UnixSocket != "" {
			path := filepath.Clean(r.UnixSocket)
			if other, ok := sockets[path]; ok {
				return fmt.Errorf("route %q: unix_socket: %s is already the socket of route %q", r.Name, path, other)
			}
			sockets[path] = r.Name
		}
	}
	return nil
}

// Serve runs cfg's routes until ctx ends; see Server.Serve.
func Serve(ctx context.Context, cfg Config) error {
	s, err := New(cfg)
	if err != nil {
		return err
	}
	return s.Serve(ctx)
}

// Ready is closed once every listener is bound. It stays open when Serve fails to bind, so
// wait for Serve's return as well.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Addr returns the TCP address bound for the named route, or nil for a route that is not
// running.
func (s *Server) Addr(route string) net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if rs := s.routes[route]; rs != nil {
		return rs.tcp.Addr()
	}
	return nil
}

// Serve binds every route's listeners, or none of them if any fails, and serves sessions
// until ctx ends. It then stops accepting, lets live sessions finish for up to the shutdown
// timeout, and closes those still open, returning ErrShutdownTimeout if there were any.
// Serve may be called only once.
func (s *Server) Serve(ctx context.Context) error {
	s.updateMu.Lock()
	bound, err := s.bindRoutes(ctx, s.cfg.Routes)
	if err != nil {
		s.updateMu.Unlock()
		return err
	}
	s.serveCtx = ctx
	for _, rs := range bound {
		s.startRoute(rs)
	}
	s.updateMu.Unlock()
	close(s.ready)

	<-ctx.Done()
	s.updateMu.Lock()
	defer s.updateMu.Unlock()
	s.mu.Lock()
	s.draining = true
	routes := make([]*routeServer, 0, len(s.routes))
	for _, rs := range s.routes {
		routes = append(routes, rs)
	}
	s.mu.Unlock()
	s.log.Info("shutting down: no longer accepting connections", "open_sessions", s.openSessions())
	for _, rs := range routes {
		rs.stopAccepting()
	}
	return s.drain()
}

// Update replaces the running routes with routes, as a configuration reload does: new
// routes start, removed routes stop and their open sessions are closed at once, and changed
// routes restart (closing their sessions too). Unchanged routes and their sessions are left
// alone. If routes is invalid, or a new listener cannot be bound, Update returns an error
// and keeps the routes that were running.
func (s *Server) Update(routes []Route) error {
	if len(routes) == 0 {
		return errors.New("no routes configured")
	}
	if err := ValidateRoutes(routes); err != nil {
		return err
	}
	s.updateMu.Lock()
	defer s.updateMu.Unlock()
	if s.serveCtx == nil || s.serveCtx.Err() != nil {
		return errors.New("update: the server is not serving")
	}

	s.mu.Lock()
	old := make(map[string]*routeServer, len(s.routes))
	for name, rs := range s.routes {
		old[name] = rs
	}
	s.mu.Unlock()

	var added, changed []Route
	keep := make(map[string]bool)
	for _, r := range routes {
		prev, ok := old[r.Name]
		switch {
		case !ok:
			added = append(added, r)
		case !reflect.DeepEqual(*prev.route, r):
			changed = append(changed, r)
		default:
			keep[r.Name] = true
		}
	}

	// Stop changed and removed routes first: a changed route may keep its port.
	// NOTE: if the new listeners then fail to bind, the old routes are bound again but
	// their closed sessions are not restored. Handing a kept port's listener over would
	// avoid that.
	var stopped []*routeServer
	for name, rs := range old {
		if !keep[name] {
			s.stopRoute(rs)
			stopped = append(stopped, rs)
		}
	}
	bound, err := s.bindRoutes(s.serveCtx, append(added, changed...))
	if err != nil {
		// Put back what was stopped, on the listeners' old addresses.
		var restore []Route
		for _, rs := range stopped {
			restore = append(restore, *rs.route)
		}
		if back, rerr := s.bindRoutes(s.serveCtx, restore); rerr == nil {
			for _, rs := range back {
				s.startRoute(rs)
			}
		} else {
			s.log.Error("reload failed and the previous routes could not be restored", "err", rerr)
		}
		return err
	}
	for _, rs := range bound {
		s.startRoute(rs)
	}
	for _, rs := range stopped {
		still := slices.ContainsFunc(routes, func(r Route) bool { return r.Name == rs.route.Name })
		if !still {
			s.log.Info("route removed", "route", rs.route.Name)
		}
	}
	s.cfg.Routes = append([]Route(nil), routes...)
	return nil
}

// startRoute registers rs and starts its accept loops.
func (s *Server) startRoute(rs *routeServer) {
	s.mu.Lock()
	s.routes[rs.route.Name] = rs
	s.mu.Unlock()
	for _, ln := range rs.listeners() {
		rs.accepting.Add(1)
		go func() {
			defer rs.accepting.Done()
			s.acceptLoop(rs, ln)
		}()
	}
}

// stopRoute closes rs's listeners, waits for its accept loops and closes its sessions.
func (s *Server) stopRoute(rs *routeServer) {
	s.mu.Lock()
	if s.routes[rs.route.Name] == rs {
		delete(s.routes, rs.route.Name)
	}
	s.mu.Unlock()
	rs.stopAccepting()
	s.mu.Lock()
	n := 0
	for sess := range s.sessions {
		if sess.rs == rs {
			sess.abort(outcomeReload)
			n++
		}
	}
	s.mu.Unlock()
	s.log.Info("route stopped", "route", rs.route.Name, "closed_sessions", n)
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
		sess.abort(outcomeShutdown)
	}
	s.mu.Unlock()
	s.log.Warn("shutdown timeout reached: closing open sessions", "sessions", n, "timeout", s.cfg.ShutdownTimeout)
	<-done
	return fmt.Errorf("%w: open sessions closed: %d", ErrShutdownTimeout, n)
}

func (s *Server) openSessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// bindRoutes binds the listeners of routes, or none of them if any fails.
func (s *Server) bindRoutes(ctx context.Context, routes []Route) ([]*routeServer, error) {
	var bound []*routeServer
	for i := range routes {
		rs, err := s.bind(ctx, &routes[i])
		if err != nil {
			for _, b := range bound {
				b.stopAccepting()
			}
			return nil, err
		}
		bound = append(bound, rs)
	}
	return bound, nil
}

// routeServer is a running route: its listeners, upstream TLS configuration and counters.
type routeServer struct {
	route     *Route
	proto     protocol
	keyShares *keyShares
	tcp       net.Listener
	unix      net.Listener
	accepting sync.WaitGroup
	// stopped is closed by stopAccepting, so that an accept loop in its error backoff
	// returns at once.
	stopped  chan struct{}
	stopOnce sync.Once
	refusals refusalLimiter

	active           atomic.Int64
	bytesToUpstream  atomic.Int64
	bytesToClient    atomic.Int64
	credentialsFetch atomic.Int32 // fetchUnknown, fetchOK or fetchFailed
}

// Results of a route's last credential fetch.
const (
	fetchUnknown int32 = iota
	fetchOK
	fetchFailed
)

func (rs *routeServer) listeners() []net.Listener {
	if rs.unix != nil {
		return []net.Listener{rs.tcp, rs.unix}
	}
	return []net.Listener{rs.tcp}
}

// stopAccepting closes the listeners and waits for the accept loops to return.
func (rs *routeServer) stopAccepting() {
	rs.stopOnce.Do(func() { close(rs.stopped) })
	for _, ln := range rs.listeners() {
		ln.Close()
	}
	rs.accepting.Wait()
}

func (s *Server) bind(ctx context.Context, r *Route) (*routeServer, error) {
	copied := *r
	r = &copied
	tlsConfig, err := r.upstreamTLSConfig()
	if err != nil {
		return nil, err
	}
	ip, err := r.resolveListenIP(ctx)
	if err != nil {
		return nil, err
	}
	rs := &routeServer{route: r, proto: protocols[r.Protocol], keyShares: newKeyShares(tlsConfig),
		stopped: make(chan struct{})}
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
	if r.MaxConnections > 0 {
		attrs = append(attrs, "max_connections", r.MaxConnections)
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

func (s *Server) acceptLoop(rs *routeServer, ln net.Listener) {
	var delay time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors, for example: back off instead of spinning.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Error("accept failed", "route", rs.route.Name, "err", err, "retry_in", delay)
			select {
			case <-time.After(delay):
			case <-rs.stopped:
				return
			}
			continue
		}
		delay = 0
		sess := s.newSession(rs, conn)
		go sess.run(s.serveCtx)
	}
}
