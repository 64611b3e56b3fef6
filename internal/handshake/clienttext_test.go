package handshake

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"testing"
)

func TestClientErrorText(t *testing.T) {
	addr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 41001}
	local := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 50516}
	timeout := &net.OpError{Op: "read", Net: "tcp", Source: local, Addr: addr, Err: os.ErrDeadlineExceeded}
	refused := &net.OpError{Op: "dial", Net: "tcp", Addr: addr, Err: errors.New("connect: connection refused")}
	expired, cancelExpired := context.WithTimeout(context.Background(), 0)
	defer cancelExpired()
	canceled, cancel := context.WithCancel(context.Background())
	cancel()

	tests := []struct {
		name string
		ctx  context.Context
		err  error
		want string
	}{
		{"address dropped", context.Background(), fmt.Errorf("upstream dial: %w", refused),
			"upstream dial: dial: connect: connection refused"},
		{"no socket error", context.Background(), errors.New("secrets file: permission denied"),
			"secrets file: permission denied"},
		{"timeout names step", expired, fmt.Errorf("read upstream message: %w", timeout),
			`login timed out in step "read upstream message"`},
		{"timeout keeps hint", expired, fmt.Errorf("upstream tls handshake: %w (check TLS)", timeout),
			`login timed out in step "upstream tls handshake" (check TLS)`},
		{"timeout without step", expired, timeout, "login timed out"},
		{"timeout without socket error", expired, errors.New("redial: no route"),
			"login timed out: redial: no route"},
		{"canceled", canceled, fmt.Errorf("read upstream message: %w", timeout),
			`login was canceled in step "read upstream message"`},
		{"joined errors", context.Background(), errors.Join(refused, fmt.Errorf("retry: %w", timeout)),
			"dial: connect: connection refused\nretry: read: i/o timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ClientErrorText(tt.ctx, tt.err); got != tt.want {
				t.Errorf("ClientErrorText = %q, want %q", got, tt.want)
			}
		})
	}
}
