package pgauth

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/knoxcall/dbproxy/credsource"
	"github.com/knoxcall/dbproxy/internal/dbtest"
)

// serveOne accepts one connection on a loopback listener, runs fn on it and returns the
// client side.
func serveOne(t *testing.T, fn func(conn net.Conn) error) (net.Conn, <-chan error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	result := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			result <- err
			return
		}
		defer conn.Close()
		result <- fn(conn)
	}()
	return dialClient(t, ln.Addr().String()), result
}

func TestReject(t *testing.T) {
	dialErr := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connect: connection refused")}
	tests := []struct {
		name     string
		cause    error
		wantCode string
		wantText string
	}{
		{"upstream unreachable", fmt.Errorf("upstream dial: %w", dialErr), codeUnableToConnect, "connection refused"},
		{"certificate rejected", fmt.Errorf("upstream tls handshake: %w", x509.HostnameError{Certificate: &x509.Certificate{}, Host: "db"}), codeConnectionFailure, "certificate"},
		{"secret not found", fmt.Errorf("fetch credentials for secret %q: %w", "sec_orders", credsource.ErrNotFound), codeInvalidAuthSpec, "secret not found"},
		{"other source failure", errors.New("secrets file: permission denied"), codeInvalidAuthSpec, "permission denied"},
		{"route at connection limit", ErrTooManyConnections, codeTooManyConnections, "too many connections"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, result := serveOne(t, func(conn net.Conn) error {
				return Reject(t.Context(), conn, "orders", tt.cause)
			})
			c.Write(sslRequest)
			c.Write(startupBytes(pgproto3.ProtocolVersion30, "user", "u", "database", "d"))
			var reply [1]byte
			if _, err := io.ReadFull(c, reply[:]); err != nil || reply[0] != 'N' {
				t.Fatalf("SSLRequest reply = %q, %v; want N", reply, err)
			}
			er := errorOf(t, readUntilReady(t, c))
			if er.Code != tt.wantCode {
				t.Errorf("SQLSTATE = %s, want %s", er.Code, tt.wantCode)
			}
			if er.Severity != "FATAL" || er.SeverityUnlocalized != "FATAL" {
				t.Errorf("severity = %q/%q, want FATAL", er.Severity, er.SeverityUnlocalized)
			}
			if !strings.HasPrefix(er.Message, `dbproxy route "orders": `) {
				t.Errorf("message %q does not start with the route", er.Message)
			}
			if !strings.Contains(er.Message, tt.wantText) {
				t.Errorf("message %q does not contain %q", er.Message, tt.wantText)
			}
			if err := <-result; err != nil {
				t.Errorf("Reject: %v", err)
			}
		})
	}
}

func TestRejectCancelRequest(t *testing.T) {
	c, result := serveOne(t, func(conn net.Conn) error {
		return Reject(t.Context(), conn, "orders", errors.New("down"))
	})
	c.Write([]byte{0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1, 9, 9, 9, 9})
	if err := <-result; err != nil {
		t.Errorf("Reject: %v", err)
	}
	rest, _ := io.ReadAll(c)
	if len(rest) != 0 {
		t.Errorf("CancelRequest got reply %q, want none", rest)
	}
}

func TestRejectSilentClientTimesOut(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	_, result := serveOne(t, func(conn net.Conn) error {
		return Reject(ctx, conn, "orders", errors.New("down"))
	})
	select {
	case err := <-result:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("error = %v, want context.DeadlineExceeded", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Reject still waiting 2 s after its deadline")
	}
}

// TestFakeCancelForwarded checks that a CancelRequest with a 32-byte key (protocol 3.2)
// reaches the upstream byte for byte over TLS, and that the client gets no reply.
func TestFakeCancelForwarded(t *testing.T) {
	key := bytes.Repeat([]byte{0xab}, 32)
	cancelMsg := append([]byte{0, 0, 0, 44, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0x30, 0x39}, key...)
	got := make(chan []byte, 1)
	f := startFake(t, func(f *fakeServer, conn net.Conn) {
		_, r, err := f.acceptTLS(conn)
		if err != nil {
			got <- nil
			return
		}
		p, err := readStartupPacket(r)
		if err != nil {
			got <- nil
			return
		}
		got <- p.Raw
	})
	p := startProxy(t, proxyConfig{Upstream: f.Addr, Creds: fakeCreds, TLS: f.Certs.ClientTLS("127.0.0.1")})
	c := dialClient(t, p.Addr())
	c.Write(cancelMsg)
	rest, err := io.ReadAll(c)
	if err != nil || len(rest) != 0 {
		t.Errorf("client got %q, %v; want a close with no reply", rest, err)
	}
	if raw := <-got; !bytes.Equal(raw, cancelMsg) {
		t.Errorf("upstream got %x, want %x", raw, cancelMsg)
	}
	if err := p.lastError(t, 1); !errors.Is(err, ErrCancelRequest) {
		t.Errorf("Handshake error = %v, want ErrCancelRequest", err)
	}
}

func TestSCRAMClientCache(t *testing.T) {
	cache := newSCRAMCache(2)
	a1, err := cache.client("app", "one")
	if err != nil {
		t.Fatal(err)
	}
	a2, _ := cache.client("app", "one")
	if a1 != a2 {
		t.Error("same credentials got two SCRAM clients, want one cached client")
	}
	b, _ := cache.client("app", "two")
	if b == a1 {
		t.Error("different passwords share a SCRAM client")
	}
	cache.client("other", "one")
	if n := cache.len(); n != 2 {
		t.Errorf("cache holds %d clients, want the bound 2", n)
	}
	if again, _ := cache.client("app", "one"); again == a1 {
		t.Error("least recently used client was not evicted")
	}
}

// TestUpstreamDown checks what psql shows when the proxy cannot reach the upstream.
func TestUpstreamDown(t *testing.T) {
	p := startProxy(t, proxyConfig{Upstream: fmt.Sprintf("127.0.0.1:%d", dbtest.FreePort(t)), Creds: fakeCreds})
	start := time.Now()
	out, err := psql(t, t.Context(), fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb", p.Port), "-c", "select 1").CombinedOutput()
	if err == nil {
		t.Fatalf("psql succeeded: %s", out)
	}
	for _, want := range []string{`FATAL:  dbproxy route "testroute": `, "connection refused"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("psql output %q does not contain %q", out, want)
		}
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("psql took %v to report the failure", elapsed)
	}
}
