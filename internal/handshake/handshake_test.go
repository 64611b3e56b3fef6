package handshake_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/knoxcall/dbproxy/internal/dbtest"
	"github.com/knoxcall/dbproxy/internal/handshake"
)

// TestStartTLSHints checks the cause that StartTLS suggests when the server does not speak
// TLS: one that closes the connection and one that sends nothing. A login cancelled for
// another reason gets no hint.
func TestStartTLSHints(t *testing.T) {
	const (
		closedHint = "the server closed the connection: check that the upstream port has TLS enabled"
		silentHint = "the server did not answer the TLS handshake: check that the upstream port has TLS enabled"
	)
	for _, tc := range []struct {
		name   string
		handle func(net.Conn)
		ctx    func() (context.Context, context.CancelFunc)
		want   string // empty: no hint
	}{
		{
			name:   "server closes",
			handle: func(c net.Conn) { c.Close() },
			ctx: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), 5*time.Second)
			},
			want: closedHint,
		},
		{
			name:   "server sends nothing",
			handle: func(c net.Conn) { io.Copy(io.Discard, c) },
			ctx: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), 200*time.Millisecond)
			},
			want: silentHint,
		},
		{
			name:   "login cancelled",
			handle: func(c net.Conn) { io.Copy(io.Discard, c) },
			ctx: func() (context.Context, context.CancelFunc) {
				ctx, cancel := context.WithCancel(context.Background())
				time.AfterFunc(200*time.Millisecond, cancel)
				return ctx, cancel
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := dbtest.ServeLoopback(t, tc.handle)
			conn, err := net.Dial("tcp", addr.String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ctx, cancel := tc.ctx()
			defer cancel()
			stop := handshake.WatchContext(ctx, conn)
			defer stop()

			_, err = handshake.StartTLS(ctx, conn, &tls.Config{ServerName: "db"})
			if err == nil {
				t.Fatal("StartTLS succeeded against a server without TLS")
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "upstream tls handshake: ") {
				t.Errorf("error %q does not name the step", msg)
			}
			for _, hint := range []string{closedHint, silentHint} {
				if got := strings.Contains(msg, hint); got != (hint == tc.want) {
					t.Errorf("error %q: contains %q = %v, want %v", msg, hint, got, hint == tc.want)
				}
			}
		})
	}
}

func TestClientReadError(t *testing.T) {
	done, cancel := context.WithCancel(context.Background())
	cancel()
	reset := &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}
	for _, tc := range []struct {
		name       string
		ctx        context.Context
		err        error
		wantClosed bool
		wantCtx    bool
	}{
		{"eof", context.Background(), io.EOF, true, false},
		{"unexpected eof", context.Background(), fmt.Errorf("read startup: %w", io.ErrUnexpectedEOF), true, false},
		{"reset", context.Background(), reset, true, false},
		{"other", context.Background(), errors.New("bad length"), false, false},
		{"context done", done, io.EOF, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := handshake.ClientReadError(tc.ctx, tc.err)
			if got := errors.Is(err, handshake.ErrClientClosed); got != tc.wantClosed {
				t.Errorf("errors.Is(%v, ErrClientClosed) = %v, want %v", err, got, tc.wantClosed)
			}
			if got := errors.Is(err, context.Canceled); got != tc.wantCtx {
				t.Errorf("errors.Is(%v, context.Canceled) = %v, want %v", err, got, tc.wantCtx)
			}
			if !errors.Is(err, tc.err) && !tc.wantCtx {
				t.Errorf("%v does not wrap %v", err, tc.err)
			}
		})
	}
	if err := handshake.ClientReadError(context.Background(), nil); err != nil {
		t.Errorf("ClientReadError(nil) = %v, want nil", err)
	}
}
