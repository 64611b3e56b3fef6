package knoxproxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/knoxcall/dbproxy/credsource"
	"github.com/knoxcall/dbproxy/internal/dbtest"
	"github.com/knoxcall/dbproxy/internal/handshake"
	"github.com/knoxcall/dbproxy/peercred"
)

func TestMain(m *testing.M) {
	protocols["line"] = lineProtocol
	goleak.VerifyTestMain(m)
}

const canaryPassword = "canary-Pa55word-7b1e"

// lineProtocol is a protocol made for these tests. The client sends "LOGIN\n" and gets
// "WELCOME\n"; upstream, after TLS, the agent sends "AUTH user password\n" and gets "OK\n"
// or "DENIED\n". Then bytes flow unchanged.
var lineProtocol = protocol{
	clientSpeaksFirst: true,
	handshake: func(ctx context.Context, client, upstream net.Conn, creds credsource.Credentials, opts handshake.Options) (handshake.Conns, error) {
		stop := handshake.WatchContext(ctx, client, upstream)
		defer stop()
		cr := bufio.NewReader(client)
		line, err := cr.ReadString('\n')
		if err != nil {
			return handshake.Conns{}, handshake.ContextError(ctx, err)
		}
		if line != "LOGIN\n" {
			fmt.Fprintf(client, "ERROR expected LOGIN\n")
			return handshake.Conns{}, fmt.Errorf("%w: got %q", handshake.ErrClientProtocol, line)
		}
		for attempt := 0; ; attempt++ {
			tc, err := handshake.StartTLS(ctx, upstream, opts.TLSConfig)
			if err != nil {
				fmt.Fprintf(client, "ERROR route %s: upstream tls\n", opts.Route)
				return handshake.Conns{}, handshake.ContextError(ctx, err)
			}
			fmt.Fprintf(tc, "AUTH %s %s\n", creds.Username, creds.Password)
			ur := bufio.NewReader(tc)
			reply, err := ur.ReadString('\n')
			if err != nil {
				return handshake.Conns{Upstream: tc}, handshake.ContextError(ctx, err)
			}
			if reply == "OK\n" {
				io.WriteString(client, "WELCOME\n")
				handshake.ClearDeadlines(client, upstream)
				return handshake.Conns{
					Client:   &handshake.BufferedConn{Conn: client, R: cr},
					Upstream: &handshake.BufferedConn{Conn: tc, R: ur},
				}, nil
			}
			if attempt == 0 && opts.Redial != nil {
				next, fresh, err := opts.Redial(ctx)
				if err == nil {
					tc.Close()
					upstream, creds = next, fresh
					stop()
					stop = handshake.WatchContext(ctx, client, upstream)
					continue
				}
			}
			io.WriteString(client, "DENIED\n")
			return handshake.Conns{Upstream: tc}, handshake.ErrAuthFailed
		}
	},
	reject: func(ctx context.Context, client net.Conn, route string, cause error) error {
		_, err := fmt.Fprintf(client, "ERROR route %s: %v\n", route, cause)
		return err
	},
}

// lineUpstream is a TLS server for lineProtocol that accepts one password and then echoes.
type lineUpstream struct {
	ln       net.Listener
	password atomic.Value
	// groups, when set to a non-empty []tls.CurveID, limits the key exchange groups that
	// the server accepts.
	groups atomic.Value
	conns  atomic.Int64
	wg     sync.WaitGroup
}

func startLineUpstream(t *testing.T, certs *dbtest.Certs, password string) *lineUpstream {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(certs.ServerCert, certs.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	u := &lineUpstream{}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{cert},
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			groups, _ := u.groups.Load().([]tls.CurveID)
			if len(groups) == 0 {
				return nil, nil
			}
			return &tls.Config{Certificates: []tls.Certificate{cert}, CurvePreferences: groups}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	u.ln = ln
	u.password.Store(password)
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.conns.Add(1)
			u.wg.Add(1)
			go func() {
				defer u.wg.Done()
				defer c.Close()
				r := bufio.NewReader(c)
				line, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if line != "AUTH app "+u.password.Load().(string)+"\n" {
					io.WriteString(c, "DENIED\n")
					return
				}
				io.WriteString(c, "OK\n")
				io.Copy(c, r)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); u.wg.Wait() })
	return u
}

func (u *lineUpstream) port() int { return u.ln.Addr().(*net.TCPAddr).Port }

// countingSource counts fetches and can be told to fail.
type countingSource struct {
	*credsource.Static
	fetches atomic.Int64
	// afterFetch, if set, runs once after the first fetch.
	afterFetch func()
	once       sync.Once
	// failure, if set, makes fetches fail.
	failure atomic.Pointer[sourceFailure]
}

// sourceFailure is the error of every fetch of id, or of every fetch when id is empty.
type sourceFailure struct {
	id  string
	err error
}

func (s *countingSource) Fetch(ctx context.Context, id string) (credsource.Credentials, error) {
	s.fetches.Add(1)
	if f := s.failure.Load(); f != nil && (f.id == "" || f.id == id) {
		return credsource.Credentials{}, f.err
	}
	creds, err := s.Static.Fetch(ctx, id)
	if s.afterFetch != nil {
		s.once.Do(s.afterFetch)
	}
	return creds, err
}

type fixedPeer struct {
	cred peercred.Cred
	err  error
}

func (p fixedPeer) PeerCred(net.Conn) (peercred.Cred, error) { return p.cred, p.err }

type harness struct {
	srv      *Server
	source   *countingSource
	upstream *lineUpstream
	logs     *dbtest.LogBuffer
	dials    *atomic.Int64
	cancel   context.CancelFunc
	done     chan error
}

type harnessOptions struct {
	peer            peercred.Checker
	allowedUIDs     []uint32
	shutdownTimeout time.Duration
	storedPassword  string
	loginTimeout    time.Duration
	maxConnections  int
	maxLogins       int
	// beforeDial, if set, runs at the start of each upstream dial.
	beforeDial func()
}

func startHarness(t *testing.T, o harnessOptions) *harness {
	t.Helper()
	certs := dbtest.NewCerts(t, t.TempDir())
	up := startLineUpstream(t, certs, "secret")
	if o.storedPassword == "" {
		o.storedPassword = "secret"
	}
	src := &countingSource{Static: credsource.NewStatic(map[string]credsource.Credentials{
		"sec": {Username: "app", Password: o.storedPassword},
	})}
	if o.peer == nil {
		o.peer = fixedPeer{cred: peercred.Cred{UID: 1000, PID: 42}}
	}
	logs := &dbtest.LogBuffer{}
	var dials atomic.Int64
	var d net.Dialer
	srv, err := New(Config{
		Routes: []Route{{
			Name: "orders", Protocol: "line", LocalPort: dbtest.FreePort(t),
			UpstreamHost: "127.0.0.1", UpstreamPort: up.port(), SecretID: "sec",
			AllowedUIDs: o.allowedUIDs, TLS: TLS{CAFile: certs.CAFile}, LoginTimeout: o.loginTimeout,
			MaxConnections: o.maxConnections,
		}},
		Credentials:     src,
		PeerChecker:     o.peer,
		Logger:          slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		ShutdownTimeout: o.shutdownTimeout,
		MaxLogins:       o.maxLogins,
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials.Add(1)
			if o.beforeDial != nil {
				o.beforeDial()
			}
			return d.DialContext(ctx, network, addr)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{srv: srv, source: src, upstream: up, logs: logs, dials: &dials, cancel: cancel, done: make(chan error, 1)}
	go func() { h.done <- srv.Serve(ctx) }()
	<-srv.Ready()
	t.Cleanup(func() {
		h.stop(t)
		if strings.Contains(logs.String(), canaryPassword) {
			t.Errorf("log contains the stored password:\n%s", logs)
		}
	})
	return h
}

func (h *harness) stop(t *testing.T) error {
	t.Helper()
	h.cancel()
	select {
	case err, ok := <-h.done:
		if ok {
			close(h.done)
		}
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
		return nil
	}
}

func (h *harness) dial(t *testing.T) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", h.srv.Addr("orders").String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

func readLine(t *testing.T, r *bufio.Reader) string {
	t.Helper()
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("read line: %v (got %q)", err, line)
	}
	return line
}

func TestSessionEndToEnd(t *testing.T) {
	h := startHarness(t, harnessOptions{})
	c := h.dial(t)
	r := bufio.NewReader(c)
	io.WriteString(c, "LOGIN\nearly bytes after login\n")
	if got := readLine(t, r); got != "WELCOME\n" {
		t.Fatalf("got %q, want WELCOME", got)
	}
	if got := readLine(t, r); got != "early bytes after login\n" {
		t.Fatalf("read-ahead bytes: got %q", got)
	}
	io.WriteString(c, "ping\n")
	if got := readLine(t, r); got != "ping\n" {
		t.Fatalf("echo: got %q", got)
	}
	c.(*net.TCPConn).CloseWrite()
	if rest, _ := io.ReadAll(r); len(rest) != 0 {
		t.Fatalf("unexpected bytes after half-close: %q", rest)
	}
	h.stop(t)
	logs := h.logs.String()
	for _, want := range []string{"session open", "peer_uid=1000", "peer_pid=42", "session closed", "outcome=ok", "bytes_to_upstream=29", "bytes_to_client=29"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
}

// TestClientResetOutcome checks that a client that resets its connection after the login
// closes the session at Info as client_reset, not as an agent error.
func TestClientResetOutcome(t *testing.T) {
	h := startHarness(t, harnessOptions{})
	c := h.dial(t)
	r := bufio.NewReader(c)
	io.WriteString(c, "LOGIN\n")
	if got := readLine(t, r); got != "WELCOME\n" {
		t.Fatalf("got %q, want WELCOME", got)
	}
	io.WriteString(c, "ping\n")
	if got := readLine(t, r); got != "ping\n" {
		t.Fatalf("echo: got %q", got)
	}
	// Linger 0 makes Close send a TCP reset, as a client that exits with unread data does.
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
	h.stop(t)
	var closed string
	for _, line := range strings.Split(h.logs.String(), "\n") {
		if strings.Contains(line, "session closed") {
			closed = line
		}
	}
	if !strings.Contains(closed, "outcome="+outcomeClientReset) {
		t.Errorf("close line %q, want outcome %s", closed, outcomeClientReset)
	}
	if !strings.Contains(closed, "level=INFO") {
		t.Errorf("close line %q, want level INFO", closed)
	}
}

func TestPeerNotAllowed(t *testing.T) {
	for _, tc := range []struct {
		name   string
		peer   fixedPeer
		reason string
	}{
		{"uid not in list", fixedPeer{cred: peercred.Cred{UID: 1234, PID: 7}}, "uid_not_allowed"},
		{"peer unknown", fixedPeer{err: peercred.ErrUnknownPeer}, "peer_unknown"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := startHarness(t, harnessOptions{peer: tc.peer, allowedUIDs: []uint32{1000}})
			c := h.dial(t)
			io.WriteString(c, "LOGIN\n")
			if n, err := c.Read(make([]byte, 16)); err == nil {
				t.Fatalf("read %d bytes from a rejected connection, want EOF", n)
			}
			h.stop(t)
			if n := h.source.fetches.Load(); n != 0 {
				t.Errorf("credential fetches = %d, want 0", n)
			}
			if n := h.dials.Load(); n != 0 {
				t.Errorf("upstream dials = %d, want 0", n)
			}
			if logs := h.logs.String(); !strings.Contains(logs, "reason="+tc.reason) {
				t.Errorf("log lacks reason %s:\n%s", tc.reason, logs)
			}
		})
	}
}

func TestPeerAllowed(t *testing.T) {
	h := startHarness(t, harnessOptions{allowedUIDs: []uint32{5, 1000}})
	c := h.dial(t)
	io.WriteString(c, "LOGIN\n")
	if got := readLine(t, bufio.NewReader(c)); got != "WELCOME\n" {
		t.Fatalf("got %q, want WELCOME", got)
	}
}

func TestFirstBytesRejected(t *testing.T) {
	for _, tc := range []struct {
		name, first, reason string
	}{
		{"http get", "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", reasonHTTP},
		{"http post", "POST /query HTTP/1.1\r\n\r\n", reasonHTTP},
		{"tls client hello", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", reasonTLSHello},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := startHarness(t, harnessOptions{})
			c := h.dial(t)
			io.WriteString(c, tc.first)
			if b, _ := io.ReadAll(c); len(b) != 0 {
				t.Errorf("client got %q, want nothing", b)
			}
			h.stop(t)
			if n := h.source.fetches.Load(); n != 0 {
				t.Errorf("credential fetches = %d, want 0", n)
			}
			if logs := h.logs.String(); !strings.Contains(logs, "reason="+tc.reason) {
				t.Errorf("log lacks reason %s:\n%s", tc.reason, logs)
			}
		})
	}
}

// TestCredentialsErrorKeptFromClient checks that a source's own message, which can contain
// anything (here a token on an exec helper's stderr), reaches the log but not the client.
func TestCredentialsErrorKeptFromClient(t *testing.T) {
	for _, tc := range []struct {
		name, failID, want string
	}{
		{"route secret", "sec", `ERROR route orders: fetch credentials "sec": the credential source failed`},
		{"client certificate secret", "cert", `ERROR route orders: fetch credentials "cert": the credential source failed`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := startHarness(t, harnessOptions{})
			routes := []Route{h.srv.cfg.Routes[0]}
			routes[0].TLS.ClientCertSecretID = "cert"
			if err := h.srv.Update(routes); err != nil {
				t.Fatal(err)
			}
			h.source.failure.Store(&sourceFailure{id: tc.failID,
				err: errors.New(`exec source: helper exited 1: stderr "token s.Hidden123"`)})
			c := h.dial(t)
			io.WriteString(c, "LOGIN\n")
			got := readLine(t, bufio.NewReader(c))
			if !strings.HasPrefix(got, tc.want) {
				t.Errorf("got %q, want it to start with %q", got, tc.want)
			}
			if strings.Contains(got, "s.Hidden123") {
				t.Errorf("client error %q contains the source's message", got)
			}
			h.stop(t)
			if logs := h.logs.String(); !strings.Contains(logs, "s.Hidden123") {
				t.Errorf("log lacks the source's message:\n%s", logs)
			}
		})
	}
}

func TestCredentialsMissing(t *testing.T) {
	h := startHarness(t, harnessOptions{})
	h.source.Static.Delete("sec")
	c := h.dial(t)
	io.WriteString(c, "LOGIN\n")
	got := readLine(t, bufio.NewReader(c))
	if !strings.HasPrefix(got, "ERROR route orders: fetch credentials") {
		t.Fatalf("got %q, want an error naming the route and the fetch", got)
	}
	if want := "add the secret to the credential source"; !strings.Contains(got, want) {
		t.Errorf("got %q, want the next step %q", got, want)
	}
	h.stop(t)
	if n := h.dials.Load(); n != 0 {
		t.Errorf("upstream dials = %d, want 0", n)
	}
	if logs := h.logs.String(); !strings.Contains(logs, "outcome="+outcomeCredentials) {
		t.Errorf("log lacks outcome %s:\n%s", outcomeCredentials, logs)
	}
}

func TestInvalidOwnClientCertificateLogged(t *testing.T) {
	h := startHarness(t, harnessOptions{})
	// The route's own secret carries a client certificate that does not parse.
	h.source.Static.Set("sec", credsource.Credentials{
		Username: "app", Password: "secret",
		Certificate: []byte("not a certificate"), PrivateKey: []byte("not a key"),
	})
	c := h.dial(t)
	io.WriteString(c, "LOGIN\n")
	readLine(t, bufio.NewReader(c))
	h.stop(t)
	var line string
	for l := range strings.SplitSeq(h.logs.String(), "\n") {
		if strings.Contains(l, `msg="client certificate unavailable"`) {
			line = l
		}
	}
	if line == "" {
		t.Fatalf("no client certificate line:\n%s", h.logs)
	}
	if !strings.Contains(line, "secret_id=sec ") {
		t.Errorf("got %q, want secret_id=sec, the secret that holds the certificate", line)
	}
}

func TestUpstreamUnreachable(t *testing.T) {
	h := startHarness(t, harnessOptions{})
	h.upstream.ln.Close()
	c := h.dial(t)
	io.WriteString(c, "LOGIN\n")
	got := readLine(t, bufio.NewReader(c))
	if !strings.HasPrefix(got, "ERROR route orders: dial upstream") {
		t.Fatalf("got %q, want an error naming the route and the dial", got)
	}
}

func TestWrongPasswordNotRetriedWhenUnchanged(t *testing.T) {
	h := startHarness(t, harnessOptions{storedPassword: canaryPassword})
	c := h.dial(t)
	io.WriteString(c, "LOGIN\n")
	if got := readLine(t, bufio.NewReader(c)); got != "DENIED\n" {
		t.Fatalf("got %q, want DENIED", got)
	}
	h.stop(t)
	if n := h.source.fetches.Load(); n != 2 {
		t.Errorf("credential fetches = %d, want 2 (the first and one re-fetch)", n)
	}
	if n := h.dials.Load(); n != 1 {
		t.Errorf("upstream dials = %d, want 1: unchanged credentials are not retried", n)
	}
	if logs := h.logs.String(); !strings.Contains(logs, "outcome="+outcomeAuthFailed) {
		t.Errorf("log lacks outcome %s:\n%s", outcomeAuthFailed, logs)
	}
}

func TestRotatedPasswordRetried(t *testing.T) {
	h := startHarness(t, harnessOptions{storedPassword: canaryPassword})
	// The password changes on the server and in the source after the session fetched
	// the old one: the rejection makes the session fetch again and retry.
	h.source.afterFetch = func() {
		h.source.Static.Set("sec", credsource.Credentials{Username: "app", Password: "rotated"})
		h.upstream.password.Store("rotated")
	}
	c := h.dial(t)
	io.WriteString(c, "LOGIN\n")
	if got := readLine(t, bufio.NewReader(c)); got != "WELCOME\n" {
		t.Fatalf("got %q, want WELCOME after the retry", got)
	}
	if n := h.dials.Load(); n != 2 {
		t.Errorf("upstream dials = %d, want 2", n)
	}
}

func TestLoginTimeout(t *testing.T) {
	h := startHarness(t, harnessOptions{loginTimeout: 200 * time.Millisecond})
	c := h.dial(t)
	start := time.Now()
	b, _ := io.ReadAll(c)
	if len(b) != 0 {
		t.Errorf("client got %q, want nothing", b)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("silent client closed after %v, want about 200ms", d)
	}
	h.stop(t)
	if logs := h.logs.String(); !strings.Contains(logs, "outcome="+outcomeLoginTimeout) {
		t.Errorf("log lacks outcome %s:\n%s", outcomeLoginTimeout, logs)
	}
}

func TestShutdownDrains(t *testing.T) {
	t.Run("sessions that finish", func(t *testing.T) {
		h := startHarness(t, harnessOptions{shutdownTimeout: 5 * time.Second})
		c := h.dial(t)
		r := bufio.NewReader(c)
		io.WriteString(c, "LOGIN\n")
		readLine(t, r)
		go func() {
			time.Sleep(200 * time.Millisecond)
			c.Close()
		}()
		if err := h.stop(t); err != nil {
			t.Fatalf("Serve = %v, want nil after a clean drain", err)
		}
	})
	t.Run("sessions that do not", func(t *testing.T) {
		h := startHarness(t, harnessOptions{shutdownTimeout: 300 * time.Millisecond})
		c := h.dial(t)
		io.WriteString(c, "LOGIN\n")
		readLine(t, bufio.NewReader(c))
		err := h.stop(t)
		if !errors.Is(err, ErrShutdownTimeout) {
			t.Fatalf("Serve = %v, want ErrShutdownTimeout", err)
		}
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatal("session still open after shutdown")
		}
		if logs := h.logs.String(); !strings.Contains(logs, "outcome="+outcomeShutdown) {
			t.Errorf("log lacks outcome %s:\n%s", outcomeShutdown, logs)
		}
	})
}

func TestNonLoopbackRejected(t *testing.T) {
	for _, addr := range []string{"0.0.0.0", "::", "192.168.1.10", "10.0.0.1", "::ffff:10.1.2.3", "2001:db8::1"} {
		t.Run(addr, func(t *testing.T) {
			_, err := New(Config{
				Routes: []Route{{Name: "orders", Protocol: "postgres", ListenAddress: addr,
					UpstreamHost: "db", UpstreamPort: 5432, SecretID: "s"}},
				Credentials: credsource.NewStatic(nil),
			})
			if !errors.Is(err, ErrNotLoopback) {
				t.Fatalf("New = %v, want ErrNotLoopback", err)
			}
			if !strings.Contains(err.Error(), `route "orders"`) {
				t.Errorf("error %q does not name the route", err)
			}
		})
	}
}

func TestValidateRoutesConflicts(t *testing.T) {
	route := func(name, addr string, port int, socket string) Route {
		return Route{Name: name, Protocol: "redis", ListenAddress: addr, LocalPort: port, UnixSocket: socket,
			UpstreamHost: "db", UpstreamPort: 6379, SecretID: "s"}
	}
	for _, tc := range []struct {
		name   string
		routes []Route
		want   string // empty: no error
	}{
		{"distinct ports", []Route{route("a", "", 7001, ""), route("b", "", 7002, "")}, ""},
		{"same port", []Route{route("a", "", 7001, ""), route("b", "", 7001, "")},
			`route "b": local_port: 127.0.0.1 port 7001 is already the listener of route "a"`},
		{"same port, default and explicit address", []Route{route("a", "127.0.0.1", 7001, ""), route("b", "", 7001, "")},
			`route "b": local_port: 127.0.0.1 port 7001 is already the listener of route "a"`},
		{"same port, other addresses", []Route{route("a", "127.0.0.1", 7001, ""), route("b", "::1", 7001, "")}, ""},
		{"both pick a free port", []Route{route("a", "", 0, ""), route("b", "", 0, "")}, ""},
		{"same socket", []Route{route("a", "", 0, "/run/db/s"), route("b", "", 0, "/run/db/./s")},
			`route "b": unix_socket: /run/db/s is already the socket of route "a"`},
		{"same name", []Route{route("a", "", 0, ""), route("a", "", 0, "")}, `route "a": name: used by another route`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateRoutes(tc.routes)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("ValidateRoutes = %v, want nil", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("ValidateRoutes = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestLoopbackNamesAccepted(t *testing.T) {
	for _, addr := range []string{"", "127.0.0.1", "127.0.0.2", "localhost"} {
		r := Route{Name: "x", ListenAddress: addr}
		ip, err := r.resolveListenIP(context.Background())
		if err != nil {
			t.Errorf("%q: %v", addr, err)
			continue
		}
		if !ip.IsLoopback() {
			t.Errorf("%q resolved to %s", addr, ip)
		}
	}
}

func TestSniff(t *testing.T) {
	for _, tc := range []struct {
		name        string
		input       string
		redisInline bool
		want        string
	}{
		{"postgres startup", "\x00\x00\x00\x08\x04\xd2\x16\x2f", false, ""},
		{"http get", "GET / HTTP/1.1\r\n", false, reasonHTTP},
		{"http put", "PUT /x HTTP/1.1\r\n", false, reasonHTTP},
		{"http options", "OPTIONS * HTTP/1.1\r\n", false, reasonHTTP},
		{"tls hello", "\x16\x03\x01\x00\xa5", false, reasonTLSHello},
		{"0x16 not tls", "\x16\x00\x00\x00", false, ""},
		{"mongo length 790", "\x16\x03\x00\x00\x01\x00\x00\x00", false, ""},
		{"tls 1.3 record version", "\x16\x03\x03\x00\xa5", false, reasonTLSHello},
		{"redis inline get", "GET key\r\n", true, ""},
		{"redis inline get url", "GET / HTTP/1.1\r\n", true, reasonHTTP},
		{"redis post", "POST http://x/ HTTP/1.1\r\n", true, reasonHTTP},
		{"redis resp", "*1\r\n$4\r\nPING\r\n", true, ""},
		{"redis short del", "DEL\r\n", true, ""},
		{"redis short ping", "PI\r\n", true, ""},
		{"mongo length starting with G", "\x47\x01\x00\x00", false, ""},
		{"postgres sslrequest to redis", "\x00\x00\x00\x08\x04\xd2\x16\x2f", true, reasonNotRedis},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A pipe-backed reader would block past the input; a loopback socket shows
			// that sniff never waits for bytes the client did not send.
			a, b := dbtest.TCPPair(t)
			io.WriteString(a, tc.input)
			b.SetReadDeadline(time.Now().Add(2 * time.Second))
			got, err := sniff(bufio.NewReaderSize(b, sniffBufferSize), tc.redisInline)
			if err != nil {
				t.Fatalf("sniff: %v", err)
			}
			if got != tc.want {
				t.Errorf("sniff(%q) = %q, want %q", tc.input, got, tc.want)
			}
		})
	}
}

func TestMaxConnections(t *testing.T) {
	h := startHarness(t, harnessOptions{maxConnections: 1})
	first := h.dial(t)
	io.WriteString(first, "LOGIN\n")
	if got := readLine(t, bufio.NewReader(first)); got != "WELCOME\n" {
		t.Fatalf("first session: got %q, want WELCOME", got)
	}
	second := h.dial(t)
	io.WriteString(second, "LOGIN\n")
	if got := readLine(t, bufio.NewReader(second)); !strings.Contains(got, "too many connections") {
		t.Fatalf("second session: got %q, want a too-many-connections error", got)
	}
	// The rejected session may still be closing after its client read the error.
	deadline := time.Now().Add(5 * time.Second)
	for h.srv.Stats()[0].OpenSessions != 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if stats := h.srv.Stats(); len(stats) != 1 || stats[0].OpenSessions != 1 {
		t.Errorf("Stats = %+v, want one route with one open session", stats)
	}
	first.Close()
	// The slot frees once the first session ends.
	deadline = time.Now().Add(5 * time.Second)
	for h.srv.Stats()[0].OpenSessions != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	third := h.dial(t)
	io.WriteString(third, "LOGIN\n")
	if got := readLine(t, bufio.NewReader(third)); got != "WELCOME\n" {
		t.Fatalf("third session: got %q, want WELCOME", got)
	}
}

func TestMaxLogins(t *testing.T) {
	h := startHarness(t, harnessOptions{maxLogins: 1})
	// The first client holds the only login slot: its login waits for its first bytes.
	first := h.dial(t)
	waitUntil(t, 5*time.Second, func() bool {
		return strings.Contains(h.logs.String(), `msg="session open"`)
	}, func() string { return "no session open line:\n" + h.logs.String() })

	second := h.dial(t)
	io.WriteString(second, "LOGIN\n")
	if got := readLine(t, bufio.NewReader(second)); !strings.Contains(got, "too many connections") {
		t.Fatalf("second client during the first one's login: got %q, want a too-many-connections error", got)
	}
	if logs := h.logs.String(); !strings.Contains(logs, "reason=too_many_logins") {
		t.Errorf("log lacks reason=too_many_logins:\n%s", logs)
	}

	// Once the first login is done, its slot is free although its session stays open.
	io.WriteString(first, "LOGIN\n")
	if got := readLine(t, bufio.NewReader(first)); got != "WELCOME\n" {
		t.Fatalf("first client: got %q, want WELCOME", got)
	}
	// The refused session and the first login release their slots as their goroutines
	// move on, which may be a moment after the clients read their replies.
	waitUntil(t, 5*time.Second, func() bool { return h.srv.logins.Load() == 0 },
		func() string { return fmt.Sprintf("%d logins still counted", h.srv.logins.Load()) })
	third := h.dial(t)
	io.WriteString(third, "LOGIN\n")
	if got := readLine(t, bufio.NewReader(third)); got != "WELCOME\n" {
		t.Fatalf("third client after the first login ended: got %q, want WELCOME", got)
	}
}

func TestStatsCountBytesWhileOpen(t *testing.T) {
	h := startHarness(t, harnessOptions{})
	c := h.dial(t)
	r := bufio.NewReader(c)
	io.WriteString(c, "LOGIN\n")
	readLine(t, r)
	io.WriteString(c, "0123456789\n")
	readLine(t, r)
	st := h.srv.Stats()[0]
	if st.BytesToUpstream != 11 || st.BytesToClient != 11 {
		t.Errorf("bytes = %d up, %d down; want 11 and 11 while the session is open", st.BytesToUpstream, st.BytesToClient)
	}
	if !st.CredentialsOK || !st.CredentialsFetched {
		t.Errorf("credentials state = ok %v, fetched %v; want both true", st.CredentialsOK, st.CredentialsFetched)
	}
}

func TestUpdateRoutes(t *testing.T) {
	h := startHarness(t, harnessOptions{})
	orders := h.srv.cfg.Routes[0]
	live := h.dial(t)
	liveReader := bufio.NewReader(live)
	io.WriteString(live, "LOGIN\n")
	readLine(t, liveReader)

	// Adding a route leaves the existing one and its session alone.
	billing := orders
	billing.Name = "billing"
	billing.LocalPort = dbtest.FreePort(t)
	if err := h.srv.Update([]Route{orders, billing}); err != nil {
		t.Fatalf("Update (add): %v", err)
	}
	io.WriteString(live, "still here\n")
	if got := readLine(t, liveReader); got != "still here\n" {
		t.Fatalf("session of an unchanged route: got %q", got)
	}
	c, err := net.Dial("tcp", h.srv.Addr("billing").String())
	if err != nil {
		t.Fatalf("dial the added route: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "LOGIN\n")
	if got := readLine(t, bufio.NewReader(c)); got != "WELCOME\n" {
		t.Fatalf("added route: got %q", got)
	}

	// An invalid configuration keeps what runs.
	bad := billing
	bad.ListenAddress = "0.0.0.0"
	if err := h.srv.Update([]Route{orders, bad}); !errors.Is(err, ErrNotLoopback) {
		t.Fatalf("Update (non-loopback) = %v, want ErrNotLoopback", err)
	}
	if h.srv.Addr("billing") == nil || h.srv.Addr("orders") == nil {
		t.Fatal("a rejected update stopped a route")
	}

	// Removing a route closes its listener and its sessions at once.
	ordersAddr := h.srv.Addr("orders").String()
	if err := h.srv.Update([]Route{billing}); err != nil {
		t.Fatalf("Update (remove): %v", err)
	}
	if _, err := liveReader.ReadString('\n'); err == nil {
		t.Fatal("session of a removed route still open")
	}
	if c, err := net.Dial("tcp", ordersAddr); err == nil {
		c.Close()
		t.Fatal("listener of a removed route still accepts")
	}
	if h.srv.Addr("orders") != nil {
		t.Fatal("Addr still reports the removed route")
	}
	waitUntil(t, 5*time.Second, func() bool {
		return strings.Contains(h.logs.String(), "outcome=closed_at_reload")
	}, func() string { return "no close line with outcome=closed_at_reload:\n" + h.logs.String() })
}

func TestReloadDuringDialOutcome(t *testing.T) {
	dialing := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	h := startHarness(t, harnessOptions{beforeDial: func() {
		once.Do(func() { close(dialing) })
		<-release
	}})
	c := h.dial(t)
	io.WriteString(c, "LOGIN\n")
	select {
	case <-dialing:
	case <-time.After(5 * time.Second):
		t.Fatal("the session did not dial the upstream")
	}

	// Remove the route while its session dials, then let the dial finish.
	billing := h.srv.cfg.Routes[0]
	billing.Name = "billing"
	billing.LocalPort = dbtest.FreePort(t)
	if err := h.srv.Update([]Route{billing}); err != nil {
		t.Fatalf("Update: %v", err)
	}
	close(release)
	waitUntil(t, 5*time.Second, func() bool {
		return strings.Contains(h.logs.String(), `msg="session closed"`)
	}, func() string { return "no close line:\n" + h.logs.String() })
	if logs := h.logs.String(); !strings.Contains(logs, "outcome=closed_at_reload") {
		t.Errorf("log lacks outcome=closed_at_reload:\n%s", logs)
	}
}

func TestClientCertSecretWithoutCertificate(t *testing.T) {
	h := startHarness(t, harnessOptions{})
	// The route names a client certificate secret that has only a password.
	h.source.Static.Set("cert", credsource.Credentials{Username: "x", Password: "y"})
	routes := []Route{h.srv.cfg.Routes[0]}
	routes[0].TLS.ClientCertSecretID = "cert"
	if err := h.srv.Update(routes); err != nil {
		t.Fatal(err)
	}
	c := h.dial(t)
	io.WriteString(c, "LOGIN\n")
	got := readLine(t, bufio.NewReader(c))
	if !strings.Contains(got, `client certificate "cert": the secret has no certificate`) {
		t.Fatalf("got %q, want an error about the missing client certificate", got)
	}
	h.stop(t)
	if n := h.dials.Load(); n != 0 {
		t.Errorf("upstream dials = %d, want 0: no connection without the required certificate", n)
	}
}

func TestShutdownDuringLoginOutcome(t *testing.T) {
	h := startHarness(t, harnessOptions{loginTimeout: time.Minute})
	h.dial(t) // sends nothing, so its login waits for the first bytes
	waitUntil(t, 5*time.Second, func() bool {
		return strings.Contains(h.logs.String(), `msg="session open"`)
	}, func() string { return "no session open line:\n" + h.logs.String() })
	h.stop(t)
	if logs := h.logs.String(); !strings.Contains(logs, "outcome=closed_at_shutdown") {
		t.Errorf("log lacks outcome=closed_at_shutdown:\n%s", logs)
	}
}

func TestUpstreamHostForms(t *testing.T) {
	for _, tc := range []struct {
		host string
		ok   bool
	}{
		{"db.internal", true},
		{"10.0.0.5", true},
		{"::1", true},
		{"fd00::5", true},
		{"db.internal:5432", false},
		{"10.0.0.5:5432", false},
		{"[::1]", false},
	} {
		r := Route{Name: "orders", Protocol: "postgres", UpstreamHost: tc.host, UpstreamPort: 5432, SecretID: "s"}
		err := r.Validate()
		if tc.ok && err != nil {
			t.Errorf("Validate with upstream_host %q: %v, want nil", tc.host, err)
		}
		if !tc.ok && (err == nil || !strings.Contains(err.Error(), "upstream_host")) {
			t.Errorf("Validate with upstream_host %q: %v, want an upstream_host error", tc.host, err)
		}
	}
}
