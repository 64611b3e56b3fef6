package redisauth

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/knoxcall/dbproxy/credsource"
	"github.com/knoxcall/dbproxy/internal/dbtest"
)

// fakeUpstream is a scripted TLS server: it reads one command, stores it, and runs script
// on the connection.
func fakeUpstream(t *testing.T, useTLS bool, script func(c net.Conn)) (addr string, clientTLS *tls.Config, received chan string) {
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
	received = make(chan string, 1)
	done := make(chan struct{})
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		if useTLS {
			c = tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
		} else {
			io.WriteString(c, "-ERR plaintext server\r\n")
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 512)
		n, _ := c.Read(buf)
		received <- string(buf[:n])
		script(c)
	}()
	return ln.Addr().String(), certs.ClientTLS("127.0.0.1"), received
}

// loopbackPair returns both ends of a loopback TCP connection.
func loopbackPair(t *testing.T) (near, far net.Conn) {
	t.Helper()
	far, near = dbtest.TCPPair(t)
	return near, far
}

func TestHandshakeFaultyUpstream(t *testing.T) {
	tests := []struct {
		name      string
		useTLS    bool
		script    func(c net.Conn)
		wantErr   error
		wantReply string
	}{
		{"stall", true, func(c net.Conn) { io.Copy(io.Discard, c) },
			context.DeadlineExceeded, "-ERR dbproxy route \"cache\": login timed out in step \"upstream auth: read reply\"\r\n"},
		{"not resp", true, func(c net.Conn) { io.WriteString(c, "HTTP/1.1 400 Bad Request"); io.Copy(io.Discard, c) },
			ErrUpstreamProtocol, `-ERR dbproxy route "cache": upstream auth: reply starts with byte 0x48, which starts no RESP reply`},
		{"garbage", true, func(c net.Conn) { io.WriteString(c, "%%%nonsense\r\n") },
			ErrUpstreamProtocol, `-ERR dbproxy route "cache": upstream auth: unexpected reply "%%%nonsense"`},
		{"endless line", true, func(c net.Conn) { io.WriteString(c, "+"+strings.Repeat("x", 5000)) },
			ErrUpstreamProtocol, `-ERR dbproxy route "cache": upstream auth: reply longer than 1024 bytes`},
		{"closed", true, func(c net.Conn) {},
			io.EOF, `-ERR dbproxy route "cache": upstream auth: read reply: EOF`},
		{"not tls", false, func(c net.Conn) {},
			nil, `-ERR dbproxy route "cache": upstream tls handshake: `},
		{"other error code", true, func(c net.Conn) { io.WriteString(c, "-NOPERM user disabled\r\n") },
			ErrAuthFailed, `-NOPERM dbproxy route "cache": upstream rejected the stored credentials: user disabled`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr, clientTLS, _ := fakeUpstream(t, tt.useTLS, tt.script)
			upstream, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer upstream.Close()
			client, app := loopbackPair(t)
			app.SetDeadline(time.Now().Add(10 * time.Second))
			io.WriteString(app, "PING\r\n")

			ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
			defer cancel()
			_, err = Handshake(ctx, client, upstream, appCreds(), Options{Route: testRoute, TLSConfig: clientTLS})
			if err == nil {
				t.Fatal("Handshake succeeded, want an error")
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("Handshake error %v, want %v", err, tt.wantErr)
			}
			reply, _ := bufio.NewReader(app).ReadString('\n')
			if !strings.HasPrefix(reply, tt.wantReply) {
				t.Errorf("client reply %q, want prefix %q", reply, tt.wantReply)
			}
			if strings.Contains(reply, "127.0.0.1") {
				t.Errorf("client reply %q contains a socket address", reply)
			}
		})
	}
}

func TestHandshakeSendsAuthAndKeepsReadAhead(t *testing.T) {
	tests := []struct {
		name  string
		creds credsource.Credentials
		want  string
	}{
		{"user", credsource.Credentials{Username: "app", Password: "pw"}, "*3\r\n$4\r\nAUTH\r\n$3\r\napp\r\n$2\r\npw\r\n"},
		{"password only", credsource.Credentials{Password: "pw"}, "*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The server sends a second reply at once; it must reach the client.
			addr, clientTLS, received := fakeUpstream(t, true, func(c net.Conn) {
				io.WriteString(c, "+OK\r\n+EXTRA\r\n")
				io.Copy(io.Discard, c)
			})
			upstream, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer upstream.Close()
			client, _ := loopbackPair(t)
			conns, err := Handshake(t.Context(), client, upstream, tt.creds, Options{Route: testRoute, TLSConfig: clientTLS})
			if err != nil {
				t.Fatalf("Handshake: %v", err)
			}
			if got := <-received; got != tt.want {
				t.Errorf("server received %q, want %q", got, tt.want)
			}
			buf := make([]byte, 64)
			n, err := conns.Upstream.Read(buf)
			if got := string(buf[:n]); got != "+EXTRA\r\n" || err != nil {
				t.Errorf("first upstream read: got %q, %v; want +EXTRA", got, err)
			}
		})
	}
}

func TestRedirectReplyIsLoggedOnce(t *testing.T) {
	redirectWarned.Store(false)
	t.Cleanup(func() { redirectWarned.Store(false) })
	addr, clientTLS, _ := fakeUpstream(t, true, func(c net.Conn) {
		io.WriteString(c, "+OK\r\n-MOVED 3999 127.0.0.1:6381\r\n-ASK 3999 127.0.0.1:6381\r\n")
		io.Copy(io.Discard, c)
	})
	upstream, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer upstream.Close()
	client, _ := loopbackPair(t)

	var logs dbtest.LogBuffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	conns, err := Handshake(t.Context(), client, upstream, appCreds(),
		Options{Route: testRoute, TLSConfig: clientTLS, Logger: logger})
	if err != nil {
		t.Fatalf("Handshake: %v", err)
	}

	want := "-MOVED 3999 127.0.0.1:6381\r\n-ASK 3999 127.0.0.1:6381\r\n"
	got := make([]byte, len(want))
	if _, err := io.ReadFull(conns.Upstream, got); err != nil || string(got) != want {
		t.Fatalf("replies: got %q, %v; want them unchanged", got, err)
	}
	if n := strings.Count(logs.String(), "level=WARN"); n != 1 {
		t.Errorf("got %d warnings, want 1:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "redirect=MOVED") {
		t.Errorf("warning does not name the MOVED redirect:\n%s", logs.String())
	}
}
