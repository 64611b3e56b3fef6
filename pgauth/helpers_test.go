package pgauth

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/goleak"

	"github.com/knoxcall/dbproxy/credsource"
	"github.com/knoxcall/dbproxy/internal/dbtest"
	"github.com/knoxcall/dbproxy/internal/splice"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// canaryPassword is a stored password that must never show up in an error or a log line.
const canaryPassword = "canary-pw-7f3Kq9"

// testProxy accepts loopback connections and runs Handshake and a splice for each, as the
// agent core does.
type testProxy struct {
	Port int
	Logs *dbtest.LogBuffer

	mu   sync.Mutex
	errs []error
}

// proxyConfig describes the upstream of a testProxy.
type proxyConfig struct {
	Upstream string // host:port
	Creds    credsource.Credentials
	TLS      *tls.Config
	Redial   func(ctx context.Context) (net.Conn, credsource.Credentials, error)
	Timeout  time.Duration // login timeout; 10 s when zero
}

func startProxy(t testing.TB, cfg proxyConfig) *testProxy {
	t.Helper()
	p := &testProxy{Logs: &dbtest.LogBuffer{}}
	logger := slog.New(slog.NewTextHandler(p.Logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	p.Port = dbtest.ServeLoopback(t, func(client net.Conn) { p.serve(client, cfg, logger) }).Port
	return p
}

func (p *testProxy) serve(client net.Conn, cfg proxyConfig, logger *slog.Logger) {
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout)
	defer cancel()
	upstream, err := net.Dial("tcp", cfg.Upstream)
	if err != nil {
		p.record(err)
		Reject(ctx, client, "testroute", err)
		return
	}
	defer upstream.Close()
	conns, err := Handshake(ctx, client, upstream, cfg.Creds, Options{
		Route: "testroute", TLSConfig: cfg.TLS, Logger: logger, Redial: cfg.Redial,
	})
	p.record(err)
	if err != nil {
		logger.Error("handshake failed", "error", err)
		return
	}
	defer conns.Upstream.Close()
	splice.Run(conns.Client, conns.Upstream)
}

func (p *testProxy) record(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.errs = append(p.errs, err)
}

// Errors returns the Handshake results so far, nil for a success.
func (p *testProxy) Errors() []error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]error(nil), p.errs...)
}

// lastError waits up to 5 s for a session to finish its Handshake and returns its result.
func (p *testProxy) lastError(t *testing.T, n int) error {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if errs := p.Errors(); len(errs) >= n {
			return errs[n-1]
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no Handshake result number %d after 5 s", n)
	return nil
}

func (p *testProxy) Addr() string { return "127.0.0.1:" + strconv.Itoa(p.Port) }

// checkNoCanary fails the test if the canary password appears in the logs or in errors.
func checkNoCanary(t *testing.T, p *testProxy, extra ...string) {
	t.Helper()
	if strings.Contains(p.Logs.String(), canaryPassword) {
		t.Errorf("log output contains the password:\n%s", p.Logs.String())
	}
	for _, err := range p.Errors() {
		if err != nil && strings.Contains(err.Error(), canaryPassword) {
			t.Errorf("error contains the password: %v", err)
		}
	}
	for _, s := range extra {
		if strings.Contains(s, canaryPassword) {
			t.Errorf("output contains the password: %s", s)
		}
	}
}

// fakeServer is a scripted PostgreSQL upstream on a loopback port.
type fakeServer struct {
	Addr  string
	Certs *dbtest.Certs
	TLS   *tls.Config // server side
}

func startFake(t *testing.T, script func(f *fakeServer, conn net.Conn)) *fakeServer {
	t.Helper()
	certs := dbtest.NewCerts(t, t.TempDir())
	cert, err := tls.LoadX509KeyPair(certs.ServerCert, certs.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeServer{Addr: ln.Addr().String(), Certs: certs, TLS: &tls.Config{Certificates: []tls.Certificate{cert}}}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer conn.Close()
				conn.SetDeadline(time.Now().Add(10 * time.Second))
				script(f, conn)
			}()
		}
	}()
	return f
}

// acceptTLS reads the SSLRequest, answers 'S' and runs the server side of TLS.
func (f *fakeServer) acceptTLS(conn net.Conn) (*tls.Conn, *bufio.Reader, error) {
	var req [8]byte
	if _, err := io.ReadFull(conn, req[:]); err != nil {
		return nil, nil, err
	}
	if !bytes.Equal(req[:], sslRequest) {
		return nil, nil, errors.New("fake server: first packet is not an SSLRequest")
	}
	if _, err := conn.Write([]byte{'S'}); err != nil {
		return nil, nil, err
	}
	tc := tls.Server(conn, f.TLS)
	if err := tc.Handshake(); err != nil {
		return nil, nil, err
	}
	return tc, bufio.NewReader(tc), nil
}

// encode concatenates backend messages.
func encode(t testing.TB, msgs ...pgproto3.BackendMessage) []byte {
	t.Helper()
	var buf []byte
	for _, m := range msgs {
		var err error
		buf, err = m.Encode(buf)
		if err != nil {
			t.Fatal(err)
		}
	}
	return buf
}

// loginOK is what a server sends after a successful authentication.
func loginOK(t testing.TB) []byte {
	return encode(t,
		&pgproto3.AuthenticationOk{},
		&pgproto3.ParameterStatus{Name: "server_version", Value: "15.0"},
		&pgproto3.BackendKeyData{ProcessID: 42, SecretKey: []byte{1, 2, 3, 4}},
		&pgproto3.ReadyForQuery{TxStatus: 'I'},
	)
}

// startupBytes encodes a StartupMessage with the given parameters in order.
func startupBytes(version uint32, params ...string) []byte {
	msg := []byte{0, 0, 0, 0}
	msg = append(msg, byte(version>>24), byte(version>>16), byte(version>>8), byte(version))
	for _, s := range params {
		msg = append(msg, s...)
		msg = append(msg, 0)
	}
	msg = append(msg, 0)
	n := len(msg)
	msg[0], msg[1], msg[2], msg[3] = byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
	return msg
}

// readUntilReady reads backend messages from conn up to ReadyForQuery or an ErrorResponse.
func readUntilReady(t *testing.T, conn net.Conn) []pgproto3.BackendMessage {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	return receiveUntilReady(t, pgproto3.NewFrontend(conn, io.Discard))
}

// receiveUntilReady is readUntilReady on a Frontend, whose buffer may hold the bytes that
// follow, so a test can go on reading from it.
func receiveUntilReady(t *testing.T, fe *pgproto3.Frontend) []pgproto3.BackendMessage {
	t.Helper()
	var msgs []pgproto3.BackendMessage
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatalf("receive after %d messages: %v", len(msgs), err)
		}
		// Frontend reuses message values, so keep a copy of each.
		msgs = append(msgs, copyMessage(t, msg))
		switch msg.(type) {
		case *pgproto3.ReadyForQuery, *pgproto3.ErrorResponse:
			return msgs
		}
	}
}

func copyMessage(t *testing.T, msg pgproto3.BackendMessage) pgproto3.BackendMessage {
	t.Helper()
	switch m := msg.(type) {
	case *pgproto3.ErrorResponse:
		c := *m
		return &c
	case *pgproto3.ReadyForQuery:
		c := *m
		return &c
	case *pgproto3.BackendKeyData:
		c := *m
		c.SecretKey = append([]byte(nil), m.SecretKey...)
		return &c
	case *pgproto3.ParameterStatus:
		c := *m
		return &c
	case *pgproto3.NoticeResponse:
		c := *m
		return &c
	case *pgproto3.AuthenticationOk:
		return &pgproto3.AuthenticationOk{}
	}
	return msg
}

// dialClient connects to the proxy as a raw client.
func dialClient(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(15 * time.Second))
	return c
}

// errorOf returns the ErrorResponse among msgs, or fails the test.
func errorOf(t *testing.T, msgs []pgproto3.BackendMessage) *pgproto3.ErrorResponse {
	t.Helper()
	for _, m := range msgs {
		if e, ok := m.(*pgproto3.ErrorResponse); ok {
			return e
		}
	}
	t.Fatalf("no ErrorResponse among %d messages: %#v", len(msgs), msgs)
	return nil
}
