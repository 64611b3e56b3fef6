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
	"testing"
	"time"

	"github.com/knoxcall/dbproxy/internal/handshake"
)

func TestHandshakeOutcome(t *testing.T) {
	done, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		ctx  context.Context
		err  error
		want string
	}{
		{context.Background(), handshake.ErrAuthFailed, outcomeAuthFailed},
		{context.Background(), fmt.Errorf("upstream login: %w: 3D000", handshake.ErrUpstreamRejected), outcomeUpstreamRejected},
		{context.Background(), fmt.Errorf("read: %w: %w", handshake.ErrClientClosed, io.EOF), outcomeClientGone},
		{context.Background(), fmt.Errorf("read: %w: %w", handshake.ErrClientClosed, handshake.ErrEncryptionDeclined), outcomeTLSDeclined},
		{context.Background(), handshake.ErrClientProtocol, outcomeClientProtocol},
		{context.Background(), handshake.ErrUpstreamProtocol, outcomeUpstreamProtocol},
		{context.Background(), handshake.ErrCancelRequest, outcomeCancelRequest},
		{context.Background(), context.DeadlineExceeded, outcomeLoginTimeout},
		{done, io.EOF, outcomeLoginTimeout},
		{context.Background(), errors.New("other"), outcomeHandshakeFailed},
	} {
		if got := handshakeOutcome(tc.ctx, tc.err); got != tc.want {
			t.Errorf("handshakeOutcome(%v) = %s, want %s", tc.err, got, tc.want)
		}
	}
}

func TestRawConnUnwraps(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	tc := tls.Client(a, &tls.Config{})
	wrapped := &handshake.BufferedConn{Conn: tc, R: bufio.NewReader(tc)}
	for _, c := range []net.Conn{a, tc, wrapped} {
		if got := rawConn(c); got != a {
			t.Errorf("rawConn(%T) = %T %p, want the pipe end %p", c, got, got, a)
		}
	}
}

// failingListener returns the same error from every Accept, as a listener out of file
// descriptors does, and never net.ErrClosed.
type failingListener struct{ net.Listener }

func (failingListener) Accept() (net.Conn, error) {
	return nil, errors.New("accept tcp: too many open files")
}

func TestAcceptBackoffStops(t *testing.T) {
	s := &Server{log: slog.New(slog.DiscardHandler)}
	rs := &routeServer{route: &Route{Name: "orders"}, stopped: make(chan struct{})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.acceptLoop(rs, failingListener{})
	}()
	time.Sleep(50 * time.Millisecond) // a few failed accepts and backoffs
	rs.stopOnce.Do(func() { close(rs.stopped) })
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		t.Fatal("accept loop still running 3 s after the route stopped")
	}
}
