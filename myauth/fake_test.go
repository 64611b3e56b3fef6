package myauth

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"

	"github.com/knoxcall/dbproxy/credsource"
	"github.com/knoxcall/dbproxy/internal/dbtest"
)

// fakeCaps are the capabilities of the scripted upstream's greeting.
const fakeCaps = mysql.CLIENT_LONG_PASSWORD | mysql.CLIENT_PROTOCOL_41 | mysql.CLIENT_SECURE_CONNECTION |
	mysql.CLIENT_PLUGIN_AUTH | mysql.CLIENT_SSL | mysql.CLIENT_CONNECT_WITH_DB | mysql.CLIENT_TRANSACTIONS |
	mysql.CLIENT_DEPRECATE_EOF | mysql.CLIENT_CONNECT_ATTRS

// fakeUpstream is a scripted server: each accepted connection runs script, and the error it
// returns is sent to errs.
type fakeUpstream struct {
	addr string
	errs chan error
	tls  *tls.Config
}

func startFake(t *testing.T, script func(f *fakeUpstream, c net.Conn) error) *fakeUpstream {
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
	f := &fakeUpstream{addr: ln.Addr().String(), errs: make(chan error, 16),
		tls: &tls.Config{Certificates: []tls.Certificate{cert}}}
	clientTLS := certs.ClientTLS("127.0.0.1")
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				f.errs <- script(f, c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	f.tls.RootCAs = clientTLS.RootCAs
	return f
}

// proxyTo starts a test proxy for the fake with user app and password secret.
func (f *fakeUpstream) proxyTo(t *testing.T, timeout time.Duration) *testProxy {
	certsPool := f.tls.RootCAs
	return startProxy(t, proxyConfig{upstream: f.addr, timeout: timeout,
		tls:   &tls.Config{RootCAs: certsPool, ServerName: "127.0.0.1"},
		creds: credsource.Credentials{Username: "app", Password: "secret"}})
}

func fakeGreeting(caps uint32, plugin string) []byte {
	g := &greeting{serverVersion: "8.0.36-fake", connectionID: 7, capabilities: caps, charset: 33,
		status: mysql.SERVER_STATUS_AUTOCOMMIT, authPlugin: plugin}
	return g.marshal(caps, []byte("abcdefghijklmnopqrst"))
}

// acceptLogin sends the greeting, reads the SSLRequest, starts TLS and returns the parsed
// HandshakeResponse41.
func (f *fakeUpstream) acceptLogin(c net.Conn, plugin string) (*tls.Conn, *response, error) {
	if err := writePacket(c, 0, fakeGreeting(fakeCaps, plugin)); err != nil {
		return nil, nil, err
	}
	if _, _, err := readPacket(c, maxResponseLen); err != nil {
		return nil, nil, fmt.Errorf("ssl request: %w", err)
	}
	tc := tls.Server(c, f.tls)
	seq, p, err := readPacket(tc, maxResponseLen)
	if err != nil {
		return nil, nil, fmt.Errorf("response: %w", err)
	}
	if seq != 2 {
		return nil, nil, fmt.Errorf("response sequence id %d, want 2", seq)
	}
	resp, err := parseResponse(p)
	return tc, resp, err
}

var okPacket = []byte{mysql.OK_HEADER, 0, 0, 2, 0, 0, 0}

// fakeClient connects to addr and returns the client's connection and the first packet it
// receives.
func fakeClient(t *testing.T, addr string) (net.Conn, byte, []byte) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	seq, p, err := readPacket(c, maxServerPacketLen)
	if err != nil {
		t.Fatal(err)
	}
	return c, seq, p
}

// sendResponse sends a HandshakeResponse41 with the given plugin and auth response and
// returns the packets up to OK or ERR.
func sendResponse(t *testing.T, c net.Conn, plugin string, auth []byte) (seqs []byte, packets [][]byte) {
	t.Helper()
	resp := &response{capabilities: fakeCaps &^ mysql.CLIENT_SSL, maxPacketSize: 1 << 24, charset: 33}
	if err := writePacket(c, 1, resp.marshal("app", auth, plugin, false)); err != nil {
		t.Fatal(err)
	}
	for {
		seq, p, err := readPacket(c, maxServerPacketLen)
		if err != nil {
			t.Fatalf("after %d packets: %v", len(packets), err)
		}
		seqs, packets = append(seqs, seq), append(packets, p)
		if p[0] == mysql.OK_HEADER || p[0] == mysql.ERR_HEADER {
			return seqs, packets
		}
	}
}

func lastHandshakeError(t *testing.T, p *testProxy) error {
	t.Helper()
	waitFor(t, func() bool { return len(p.Errors()) > 0 })
	errs := p.Errors()
	return errs[len(errs)-1]
}

func TestUpstreamFaults(t *testing.T) {
	tests := []struct {
		name      string
		script    func(f *fakeUpstream, c net.Conn) error
		wantCode  uint16
		wantInMsg string
		wantErr   error
	}{
		{
			name: "stall before greeting",
			script: func(f *fakeUpstream, c net.Conn) error {
				c.Read(make([]byte, 1)) // until the agent gives up
				return nil
			},
			wantCode: 1043, wantInMsg: `login timed out in step "upstream greeting"`, wantErr: context.DeadlineExceeded,
		},
		{
			name: "garbage greeting",
			script: func(f *fakeUpstream, c net.Conn) error {
				_, err := c.Write([]byte("HTTP/1.1 400 Bad Request\r\n\r\n"))
				return err
			},
			wantCode: 1043, wantInMsg: "packet too long", wantErr: ErrUpstreamProtocol,
		},
		{
			name: "short greeting",
			script: func(f *fakeUpstream, c net.Conn) error {
				return writePacket(c, 0, []byte{10, '8', 0, 1})
			},
			wantCode: 1043, wantInMsg: "malformed", wantErr: ErrUpstreamProtocol,
		},
		{
			name: "no TLS",
			script: func(f *fakeUpstream, c net.Conn) error {
				return writePacket(c, 0, fakeGreeting(fakeCaps&^mysql.CLIENT_SSL, mysql.AUTH_NATIVE_PASSWORD))
			},
			wantCode: 1043, wantInMsg: "does not support TLS", wantErr: ErrUpstreamProtocol,
		},
		{
			name: "too many connections",
			script: func(f *fakeUpstream, c net.Conn) error {
				return writePacket(c, 0, errPacket(1040, "08004", "Too many connections", true))
			},
			wantCode: 1040, wantInMsg: "Too many connections", wantErr: ErrUpstreamRejected,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startFake(t, tt.script)
			p := f.proxyTo(t, 500*time.Millisecond)
			start := time.Now()
			_, seq, pkt := fakeClient(t, p.Addr)
			if pkt[0] != mysql.ERR_HEADER {
				t.Fatalf("client got %x, want ERR", pkt)
			}
			if seq != 0 {
				t.Errorf("ERR sequence id %d, want 0", seq)
			}
			serr := parseErrPacket(pkt)
			if serr.Code != tt.wantCode {
				t.Errorf("ERR code %d, want %d (%v)", serr.Code, tt.wantCode, serr)
			}
			if !strings.Contains(serr.Message, tt.wantInMsg) {
				t.Errorf("ERR message %q, want it to contain %q", serr.Message, tt.wantInMsg)
			}
			if strings.Contains(serr.Message, "127.0.0.1") {
				t.Errorf("ERR message %q contains a socket address", serr.Message)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("ERR after %v, want it within the login timeout", d)
			}
			err := lastHandshakeError(t, p)
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("Handshake error %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestUpstreamAuthExchange(t *testing.T) {
	tests := []struct {
		name     string
		script   func(f *fakeUpstream, c net.Conn) error
		wantOK   bool
		wantErr  error
		wantText string
	}{
		{
			name: "switch to mysql_clear_password",
			script: func(f *fakeUpstream, c net.Conn) error {
				tc, _, err := f.acceptLogin(c, mysql.AUTH_NATIVE_PASSWORD)
				if err != nil {
					return err
				}
				writePacket(tc, 3, append([]byte("\xfemysql_clear_password\x00"), "0123456789abcdefghij\x00"...))
				seq, p, err := readPacket(tc, 100)
				if err != nil || seq != 4 || string(p) != "secret\x00" {
					return fmt.Errorf("clear password reply seq %d %q %v", seq, p, err)
				}
				return writePacket(tc, 5, okPacket)
			},
			wantOK: true,
		},
		{
			name: "caching_sha2_password full authentication",
			script: func(f *fakeUpstream, c net.Conn) error {
				tc, resp, err := f.acceptLogin(c, mysql.AUTH_CACHING_SHA2_PASSWORD)
				if err != nil {
					return err
				}
				want := mysql.CalcCachingSha2Password([]byte("abcdefghijklmnopqrst"), []byte("secret"))
				if string(resp.authResponse) != string(want) || resp.user != "app" {
					return fmt.Errorf("scramble answer %x for %q, want %x for app", resp.authResponse, resp.user, want)
				}
				writePacket(tc, 3, []byte{authMoreData, mysql.CACHE_SHA2_FULL_AUTH})
				seq, p, err := readPacket(tc, 100)
				if err != nil || seq != 4 || string(p) != "secret\x00" {
					return fmt.Errorf("full auth reply seq %d %q %v", seq, p, err)
				}
				return writePacket(tc, 5, okPacket)
			},
			wantOK: true,
		},
		{
			name: "unknown plugin",
			script: func(f *fakeUpstream, c net.Conn) error {
				tc, _, err := f.acceptLogin(c, mysql.AUTH_NATIVE_PASSWORD)
				if err != nil {
					return err
				}
				return writePacket(tc, 3, []byte("\xfeauthentication_kerberos_client\x00nonce\x00"))
			},
			wantErr: ErrUnsupportedPlugin, wantText: "authentication_kerberos_client",
		},
		{
			name: "AuthMoreData for mysql_native_password",
			script: func(f *fakeUpstream, c net.Conn) error {
				tc, _, err := f.acceptLogin(c, mysql.AUTH_NATIVE_PASSWORD)
				if err != nil {
					return err
				}
				return writePacket(tc, 3, []byte{authMoreData, 4})
			},
			wantErr: ErrUpstreamProtocol, wantText: "AuthMoreData",
		},
		{
			name: "wrong sequence id",
			script: func(f *fakeUpstream, c net.Conn) error {
				tc, _, err := f.acceptLogin(c, mysql.AUTH_NATIVE_PASSWORD)
				if err != nil {
					return err
				}
				return writePacket(tc, 9, okPacket)
			},
			wantErr: ErrUpstreamProtocol, wantText: "sequence id 9",
		},
		{
			name: "garbage after TLS",
			script: func(f *fakeUpstream, c net.Conn) error {
				tc, _, err := f.acceptLogin(c, mysql.AUTH_NATIVE_PASSWORD)
				if err != nil {
					return err
				}
				_, err = tc.Write([]byte("\xff\xff\xff\x03garbage"))
				return err
			},
			wantErr: ErrUpstreamProtocol, wantText: "too long",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startFake(t, tt.script)
			p := f.proxyTo(t, 2*time.Second)
			c, _, greet := fakeClient(t, p.Addr)
			g, err := parseGreeting(greet)
			if err != nil {
				t.Fatal(err)
			}
			// The greeting's plugin, as clients use it: another gets an AuthSwitchRequest.
			seqs, packets := sendResponse(t, c, g.authPlugin, nil)
			last := packets[len(packets)-1]
			if tt.wantOK {
				if last[0] != mysql.OK_HEADER || seqs[len(seqs)-1] != 2 {
					t.Fatalf("client got %x with sequence ids %v, want OK with 2", last, seqs)
				}
				if err := <-f.errs; err != nil {
					t.Errorf("fake upstream: %v", err)
				}
				return
			}
			if last[0] != mysql.ERR_HEADER || seqs[len(seqs)-1] != 2 {
				t.Fatalf("client got %x with sequence ids %v, want ERR with 2", last, seqs)
			}
			if msg := parseErrPacket(last).Message; !strings.Contains(msg, tt.wantText) || !strings.Contains(msg, "test-route") {
				t.Errorf("ERR message %q, want it to name %q and the route", msg, tt.wantText)
			}
			if err := lastHandshakeError(t, p); !errors.Is(err, tt.wantErr) {
				t.Errorf("Handshake error %v, want %v", err, tt.wantErr)
			}
		})
	}
}

// TestClientCachingSHA2Marker checks that a client that sent a caching_sha2_password scramble
// gets the fast-auth-success marker and then OK, with the sequence ids it expects.
func TestClientCachingSHA2Marker(t *testing.T) {
	f := startFake(t, func(f *fakeUpstream, c net.Conn) error {
		tc, _, err := f.acceptLogin(c, mysql.AUTH_CACHING_SHA2_PASSWORD)
		if err != nil {
			return err
		}
		writePacket(tc, 3, []byte{authMoreData, mysql.CACHE_SHA2_FAST_AUTH})
		return writePacket(tc, 4, okPacket)
	})
	p := f.proxyTo(t, 2*time.Second)
	c, _, greet := fakeClient(t, p.Addr)
	g, err := parseGreeting(greet)
	if err != nil {
		t.Fatal(err)
	}
	if g.authPlugin != mysql.AUTH_CACHING_SHA2_PASSWORD || g.serverVersion != "8.0.36-fake" {
		t.Errorf("greeting plugin %q version %q, want the server's", g.authPlugin, g.serverVersion)
	}
	if g.capabilities&mysql.CLIENT_SSL != 0 {
		t.Error("greeting offers CLIENT_SSL on the loopback leg")
	}
	if string(g.scramble) == "abcdefghijklmnopqrst" || len(g.scramble) != scrambleLen {
		t.Errorf("greeting scramble %q, want %d fresh bytes", g.scramble, scrambleLen)
	}
	seqs, packets := sendResponse(t, c, mysql.AUTH_CACHING_SHA2_PASSWORD, make([]byte, 32))
	if len(packets) != 2 || string(packets[0]) != "\x01\x03" || packets[1][0] != mysql.OK_HEADER {
		t.Fatalf("client got %x, want fast-auth marker then OK", packets)
	}
	if seqs[0] != 2 || seqs[1] != 3 {
		t.Errorf("sequence ids %v, want [2 3]", seqs)
	}
}

// TestClientLeavesEndsUpstreamWithQuit checks that the agent logs in upstream and sends
// COM_QUIT when the client leaves after the greeting, and reports the client as gone.
func TestClientLeavesEndsUpstreamWithQuit(t *testing.T) {
	f := startFake(t, func(f *fakeUpstream, c net.Conn) error {
		tc, resp, err := f.acceptLogin(c, mysql.AUTH_NATIVE_PASSWORD)
		if err != nil {
			return err
		}
		if resp.user != "app" {
			return fmt.Errorf("user %q, want app", resp.user)
		}
		writePacket(tc, 3, okPacket)
		seq, p, err := readPacket(tc, 100)
		if err != nil || seq != 0 || string(p) != "\x01" {
			return fmt.Errorf("after login: seq %d %x %v, want COM_QUIT", seq, p, err)
		}
		return nil
	})
	p := f.proxyTo(t, 2*time.Second)
	c, _, _ := fakeClient(t, p.Addr)
	c.Close()
	if err := <-f.errs; err != nil {
		t.Errorf("fake upstream: %v", err)
	}
	if err := lastHandshakeError(t, p); !errors.Is(err, ErrClientClosed) {
		t.Errorf("Handshake error %v, want it to wrap ErrClientClosed", err)
	}
}

// TestClientStallTimesOut checks that a client that never sends its response gets an ERR at
// the login timeout, and that the upstream connection still ends with COM_QUIT.
func TestClientStallTimesOut(t *testing.T) {
	f := startFake(t, func(f *fakeUpstream, c net.Conn) error {
		tc, _, err := f.acceptLogin(c, mysql.AUTH_NATIVE_PASSWORD)
		if err != nil {
			return err
		}
		writePacket(tc, 3, okPacket)
		if _, p, err := readPacket(tc, 100); err != nil || string(p) != "\x01" {
			return fmt.Errorf("after login: %x %v, want COM_QUIT", p, err)
		}
		return nil
	})
	p := f.proxyTo(t, 300*time.Millisecond)
	c, _, _ := fakeClient(t, p.Addr)
	seq, pkt, err := readPacket(c, maxServerPacketLen)
	if err != nil {
		t.Fatal(err)
	}
	want := `dbproxy route "test-route": login timed out`
	if serr := parseErrPacket(pkt); pkt[0] != mysql.ERR_HEADER || !strings.HasPrefix(serr.Message, want) {
		t.Errorf("client got %x, want ERR starting with %q", pkt, want)
	}
	// The client sent nothing after the greeting (sequence id 0), so the ERR comes next.
	if seq != 1 {
		t.Errorf("ERR sequence id %d, want 1", seq)
	}
	if err := lastHandshakeError(t, p); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Handshake error %v, want context.DeadlineExceeded", err)
	}
	if err := <-f.errs; err != nil {
		t.Errorf("fake upstream: %v", err)
	}
}

// TestUpstreamAuthStallTimesOut checks that an upstream that stops replying after TLS ends
// the login at the timeout, with an ERR that names the step and no socket address.
func TestUpstreamAuthStallTimesOut(t *testing.T) {
	f := startFake(t, func(f *fakeUpstream, c net.Conn) error {
		tc, _, err := f.acceptLogin(c, mysql.AUTH_NATIVE_PASSWORD)
		if err != nil {
			return err
		}
		tc.Read(make([]byte, 1)) // until the agent gives up
		return nil
	})
	p := f.proxyTo(t, 300*time.Millisecond)
	c, _, _ := fakeClient(t, p.Addr)
	seqs, packets := sendResponse(t, c, mysql.AUTH_NATIVE_PASSWORD, nil)
	last := packets[len(packets)-1]
	if last[0] != mysql.ERR_HEADER || seqs[len(seqs)-1] != 2 {
		t.Fatalf("client got %x with sequence ids %v, want ERR with 2", last, seqs)
	}
	msg := parseErrPacket(last).Message
	if want := `dbproxy route "test-route": login timed out in step "upstream auth"`; msg != want {
		t.Errorf("ERR message %q, want %q", msg, want)
	}
	if err := lastHandshakeError(t, p); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Handshake error %v, want context.DeadlineExceeded", err)
	}
}

func TestClientProtocolErrors(t *testing.T) {
	tests := []struct {
		name     string
		send     []byte // written raw after the greeting
		wantCode uint16
		wantText string
		wantSeq  byte // 1 when the input is not a packet with sequence id 1, as MariaDB does
	}{
		{"http", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), 1043, "HTTP", 1},
		{"tls client hello", []byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01}, 1043, "TLS", 1},
		{"ssl request", rawPacket(1, (&response{capabilities: fakeCaps, maxPacketSize: 1 << 24}).marshal("", nil, "", true)), 1043, "TLS is not offered", 2},
		{"protocol 320", rawPacket(1, []byte{0x05, 0x00, 0xff, 0xff, 0xff, 'a', 'p', 'p', 0}), 1251, "4.1", 2},
		{"wrong sequence id", rawPacket(5, (&response{capabilities: fakeCaps &^ mysql.CLIENT_SSL}).marshal("app", nil, "", false)), 1043, "sequence id 5", 1},
		{"truncated response", rawPacket(1, []byte{0x0d, 0xa2, 0, 0, 0, 0, 0, 1}), 1043, "malformed", 2},
		{"too long", []byte{0xff, 0xff, 0x7f, 1}, 1043, "too long", 2},
	}
	f := startFake(t, func(f *fakeUpstream, c net.Conn) error {
		tc, _, err := f.acceptLogin(c, mysql.AUTH_NATIVE_PASSWORD)
		if err != nil {
			return err
		}
		writePacket(tc, 3, okPacket)
		readPacket(tc, 100)
		return nil
	})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := f.proxyTo(t, 2*time.Second)
			c, _, _ := fakeClient(t, p.Addr)
			if _, err := c.Write(tt.send); err != nil {
				t.Fatal(err)
			}
			seq, pkt, err := readPacket(c, maxServerPacketLen)
			if err != nil {
				t.Fatal(err)
			}
			serr := parseErrPacket(pkt)
			if pkt[0] != mysql.ERR_HEADER || serr.Code != tt.wantCode {
				t.Fatalf("client got %x, want ERR %d", pkt, tt.wantCode)
			}
			if seq != tt.wantSeq {
				t.Errorf("ERR sequence id %d, want %d", seq, tt.wantSeq)
			}
			if !strings.Contains(serr.Message, tt.wantText) {
				t.Errorf("ERR message %q, want it to contain %q", serr.Message, tt.wantText)
			}
			if err := lastHandshakeError(t, p); !errors.Is(err, ErrClientProtocol) {
				t.Errorf("Handshake error %v, want ErrClientProtocol", err)
			}
		})
	}
}

func TestReject(t *testing.T) {
	tests := []struct {
		cause     error
		wantCode  uint16
		wantState string
	}{
		{fmt.Errorf("fetch secret: %w", credsource.ErrNotFound), 1045, "28000"},
		{errors.New("upstream dial: connection refused"), 1043, "08S01"},
	}
	for _, tt := range tests {
		t.Run(tt.wantState, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				Reject(context.Background(), c, "orders", tt.cause)
			}()
			_, seq, pkt := fakeClient(t, ln.Addr().String())
			serr := parseErrPacket(pkt)
			if seq != 0 || serr.Code != tt.wantCode || serr.State != tt.wantState {
				t.Errorf("got seq %d %v, want seq 0 code %d state %s", seq, serr, tt.wantCode, tt.wantState)
			}
			if !strings.Contains(serr.Message, `"orders"`) {
				t.Errorf("message %q does not name the route", serr.Message)
			}
		})
	}
}

func rawPacket(seq byte, payload []byte) []byte {
	n := len(payload)
	return append([]byte{byte(n), byte(n >> 8), byte(n >> 16), seq}, payload...)
}

// TestRedialAfterAccessDenied checks that a 1045 leads to one Redial, that the second login
// uses the fresh credentials, and that the client sees only the second result.
func TestRedialAfterAccessDenied(t *testing.T) {
	attempt := make(chan string, 4)
	f := startFake(t, func(f *fakeUpstream, c net.Conn) error {
		tc, resp, err := f.acceptLogin(c, mysql.AUTH_NATIVE_PASSWORD)
		if err != nil {
			return err
		}
		attempt <- resp.user
		if resp.user != "rotated" {
			return writePacket(tc, 3, errPacket(1045, "28000", "Access denied", true))
		}
		return writePacket(tc, 3, okPacket)
	})
	var redials atomic.Int32
	p := startProxy(t, proxyConfig{upstream: f.addr, timeout: 2 * time.Second,
		tls:   &tls.Config{RootCAs: f.tls.RootCAs, ServerName: "127.0.0.1"},
		creds: credsource.Credentials{Username: "stale", Password: "old"},
		redial: func(ctx context.Context) (net.Conn, credsource.Credentials, error) {
			redials.Add(1)
			c, err := (&net.Dialer{}).DialContext(ctx, "tcp", f.addr)
			return c, credsource.Credentials{Username: "rotated", Password: "new"}, err
		}})
	c, _, _ := fakeClient(t, p.Addr)
	seqs, packets := sendResponse(t, c, mysql.AUTH_NATIVE_PASSWORD, nil)
	if len(packets) != 1 || packets[0][0] != mysql.OK_HEADER || seqs[0] != 2 {
		t.Fatalf("client got %x with sequence ids %v, want one OK with 2", packets, seqs)
	}
	if first, second := <-attempt, <-attempt; first != "stale" || second != "rotated" {
		t.Errorf("upstream logins as %q then %q, want stale then rotated", first, second)
	}
	waitFor(t, func() bool { return p.Logins() == 1 })
	if n := redials.Load(); n != 1 {
		t.Errorf("redials = %d, want 1", n)
	}
}

// TestClientPluginSwitch checks the AuthSwitchRequest that a client gets when its plugin is
// not the greeting's and it sent an empty auth response, waiting for its plugin's data.
func TestClientPluginSwitch(t *testing.T) {
	tests := []struct {
		plugin   string // the client's plugin in its HandshakeResponse41
		switchTo string // the plugin of the AuthSwitchRequest, "" for none
		dataLen  int    // the length of its data
		reply    []byte // the client's reply to it
		wantSeqs []byte // sequence ids of the packets after the AuthSwitchRequest
		greeting string // the greeting's plugin, mysql_native_password when empty
		auth     []byte // the client's auth response in its HandshakeResponse41
	}{
		{mysql.AUTH_CACHING_SHA2_PASSWORD, mysql.AUTH_CACHING_SHA2_PASSWORD, scrambleLen + 1, make([]byte, 32), []byte{4, 5}, "", nil},
		{mysql.AUTH_CACHING_SHA2_PASSWORD, mysql.AUTH_CACHING_SHA2_PASSWORD, scrambleLen + 1, nil, []byte{4}, "", nil},
		{mysql.AUTH_MARIADB_ED25519, mysql.AUTH_MARIADB_ED25519, ed25519NonceLen, make([]byte, 64), []byte{4}, "", nil},
		{mysql.AUTH_SHA256_PASSWORD, mysql.AUTH_NATIVE_PASSWORD, scrambleLen + 1, make([]byte, 20), []byte{4}, "", nil},
		{mysql.AUTH_CLEAR_PASSWORD, "", 0, nil, []byte{2}, "", nil},
		// At a sha256_password greeting, a client with a password and no TLS requests the
		// server's RSA key (0x01) and would read the OK as the key.
		{mysql.AUTH_SHA256_PASSWORD, mysql.AUTH_NATIVE_PASSWORD, scrambleLen + 1, make([]byte, 20), []byte{4},
			mysql.AUTH_SHA256_PASSWORD, []byte{1}},
	}
	for _, tt := range tests {
		t.Run(tt.plugin+"/"+cmp.Or(tt.greeting, "native greeting"), func(t *testing.T) {
			greeting := cmp.Or(tt.greeting, mysql.AUTH_NATIVE_PASSWORD)
			f := startFake(t, func(f *fakeUpstream, c net.Conn) error {
				tc, _, err := f.acceptLogin(c, greeting)
				if err != nil {
					return err
				}
				return writePacket(tc, 3, okPacket)
			})
			p := f.proxyTo(t, 5*time.Second)
			c, _, _ := fakeClient(t, p.Addr)
			resp := &response{capabilities: fakeCaps &^ mysql.CLIENT_SSL, maxPacketSize: 1 << 24, charset: 33}
			if err := writePacket(c, 1, resp.marshal("app", tt.auth, tt.plugin, false)); err != nil {
				t.Fatal(err)
			}
			if tt.switchTo != "" {
				seq, p, err := readPacket(c, maxServerPacketLen)
				if err != nil {
					t.Fatal(err)
				}
				want := "\xfe" + tt.switchTo + "\x00"
				if seq != 2 || !strings.HasPrefix(string(p), want) || len(p) != len(want)+tt.dataLen {
					t.Fatalf("got %q with sequence id %d, want an AuthSwitchRequest to %s with %d bytes of data",
						p, seq, tt.switchTo, tt.dataLen)
				}
				if err := writePacket(c, 3, tt.reply); err != nil {
					t.Fatal(err)
				}
			}
			var seqs []byte
			for {
				seq, p, err := readPacket(c, maxServerPacketLen)
				if err != nil {
					t.Fatalf("after sequence ids %v: %v", seqs, err)
				}
				seqs = append(seqs, seq)
				if p[0] == mysql.OK_HEADER || p[0] == mysql.ERR_HEADER {
					if p[0] != mysql.OK_HEADER {
						t.Errorf("login result %x, want OK", p)
					}
					break
				}
				if !bytes.Equal(p, []byte{authMoreData, fastAuthSuccessByte}) {
					t.Fatalf("packet %x before the OK, want the fast-auth marker", p)
				}
			}
			if !bytes.Equal(seqs, tt.wantSeqs) {
				t.Errorf("sequence ids %v, want %v", seqs, tt.wantSeqs)
			}
			if err := <-f.errs; err != nil {
				t.Errorf("fake upstream: %v", err)
			}
		})
	}
}
