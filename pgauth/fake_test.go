package pgauth

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/knoxcall/dbproxy/credsource"
)

var fakeCreds = credsource.Credentials{Username: "app", Password: canaryPassword}

// TestFakeUpstreamFaults checks that each upstream fault ends the session with a FATAL
// ErrorResponse to the client and the right error class, before any password is sent.
func TestFakeUpstreamFaults(t *testing.T) {
	tests := []struct {
		name     string
		script   func(f *fakeServer, conn net.Conn)
		wantIs   error
		wantCode string
		wantText string
	}{
		{
			name: "N to SSLRequest",
			script: func(f *fakeServer, conn net.Conn) {
				io.ReadFull(conn, make([]byte, 8))
				conn.Write([]byte{'N'})
				io.Copy(io.Discard, conn)
			},
			wantIs:   ErrUpstreamProtocol,
			wantCode: codeConnectionFailure,
			wantText: "replied N to SSLRequest",
		},
		{
			name: "ErrorResponse to SSLRequest",
			script: func(f *fakeServer, conn net.Conn) {
				io.ReadFull(conn, make([]byte, 8))
				conn.Write(encode(t, &pgproto3.ErrorResponse{Severity: "FATAL", Code: "XX000", Message: "old server"}))
			},
			wantIs:   ErrUpstreamProtocol,
			wantCode: codeConnectionFailure,
			wantText: "ErrorResponse",
		},
		{
			name: "bytes after S in one write",
			script: func(f *fakeServer, conn net.Conn) {
				io.ReadFull(conn, make([]byte, 8))
				conn.Write(append([]byte{'S'}, encode(t, &pgproto3.AuthenticationOk{})...))
				io.Copy(io.Discard, conn)
			},
			wantIs:   ErrUpstreamProtocol,
			wantCode: codeProtocolViolation,
			wantText: "unencrypted bytes after accepting TLS",
		},
		{
			name: "bytes after S in a second write",
			script: func(f *fakeServer, conn net.Conn) {
				io.ReadFull(conn, make([]byte, 8))
				conn.(*net.TCPConn).SetNoDelay(true)
				conn.Write([]byte{'S'})
				conn.Write(encode(t, &pgproto3.AuthenticationOk{}))
				io.Copy(io.Discard, conn)
			},
			// The second segment is either seen waiting in the socket or fed to the TLS
			// handshake, which rejects it; both end the session.
			wantText: "",
		},
		{
			name: "GSSAPI requested",
			script: func(f *fakeServer, conn net.Conn) {
				tc, r, err := f.acceptTLS(conn)
				if err != nil {
					return
				}
				readStartupPacket(r)
				tc.Write(encode(t, &pgproto3.AuthenticationGSS{}))
				io.Copy(io.Discard, tc)
			},
			wantIs:   ErrUpstreamProtocol,
			wantCode: codeProtocolViolation,
			wantText: "authentication method GSSAPI",
		},
		{
			name: "unknown method code",
			script: func(f *fakeServer, conn net.Conn) {
				tc, r, err := f.acceptTLS(conn)
				if err != nil {
					return
				}
				readStartupPacket(r)
				tc.Write([]byte{'R', 0, 0, 0, 8, 0, 0, 0, 99})
				io.Copy(io.Discard, tc)
			},
			wantIs:   ErrUpstreamProtocol,
			wantCode: codeProtocolViolation,
			wantText: "method with code 99",
		},
		{
			name: "unsupported SASL mechanism",
			script: func(f *fakeServer, conn net.Conn) {
				tc, r, err := f.acceptTLS(conn)
				if err != nil {
					return
				}
				readStartupPacket(r)
				tc.Write(encode(t, &pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-512"}}))
				io.Copy(io.Discard, tc)
			},
			wantIs:   ErrUpstreamProtocol,
			wantText: "SCRAM-SHA-512",
		},
		{
			name: "AuthenticationOk without SASLFinal",
			script: func(f *fakeServer, conn net.Conn) {
				tc, r, err := f.acceptTLS(conn)
				if err != nil {
					return
				}
				readStartupPacket(r)
				tc.Write(encode(t, &pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256"}}))
				readFrontendMessage(r)
				tc.Write(loginOK(t))
				io.Copy(io.Discard, tc)
			},
			wantIs:   ErrUpstreamProtocol,
			wantText: "before completing SCRAM",
		},
		{
			name: "oversized message",
			script: func(f *fakeServer, conn net.Conn) {
				tc, r, err := f.acceptTLS(conn)
				if err != nil {
					return
				}
				readStartupPacket(r)
				tc.Write([]byte{'S', 0, 0x10, 0, 0})
				io.Copy(io.Discard, tc)
			},
			wantIs:   ErrUpstreamProtocol,
			wantText: "invalid length",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startFake(t, tt.script)
			p := startProxy(t, proxyConfig{Upstream: f.Addr, Creds: fakeCreds, TLS: f.Certs.ClientTLS("127.0.0.1")})

			c := dialClient(t, p.Addr())
			c.Write(startupBytes(pgproto3.ProtocolVersion30, "user", "someone", "database", "appdb"))
			er := errorOf(t, readUntilReady(t, c))
			if er.Severity != "FATAL" {
				t.Errorf("severity = %q, want FATAL", er.Severity)
			}
			if tt.wantCode != "" && er.Code != tt.wantCode {
				t.Errorf("SQLSTATE = %s, want %s (message %q)", er.Code, tt.wantCode, er.Message)
			}
			if !strings.Contains(er.Message, `dbproxy route "testroute"`) {
				t.Errorf("message %q does not name the route", er.Message)
			}
			if !strings.Contains(er.Message, tt.wantText) {
				t.Errorf("message %q does not contain %q", er.Message, tt.wantText)
			}
			err := p.lastError(t, 1)
			if err == nil {
				t.Fatal("Handshake succeeded, want an error")
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("error %v does not wrap %v", err, tt.wantIs)
			}
			checkNoCanary(t, p, er.Message)
		})
	}
}

// readFrontendMessage reads one regular message (type byte and length word) from r.
// Both directions share the framing, so the backend message reader serves.
func readFrontendMessage(r *bufio.Reader) ([]byte, error) {
	_, msg, err := readBackendMessage(r)
	return msg, err
}

// TestFakeStalledServer checks that a server that never replies ends the login at the
// context deadline, with ctx's error and a FATAL message to the client.
func TestFakeStalledServer(t *testing.T) {
	for _, stage := range []string{"SSLRequest", "StartupMessage"} {
		t.Run(stage, func(t *testing.T) {
			f := startFake(t, func(f *fakeServer, conn net.Conn) {
				var stalled io.Reader = conn
				if stage == "StartupMessage" {
					tc, _, err := f.acceptTLS(conn)
					if err != nil {
						return
					}
					stalled = tc
				}
				io.Copy(io.Discard, stalled) // read until the proxy gives up, reply nothing
			})
			const timeout = 300 * time.Millisecond
			p := startProxy(t, proxyConfig{Upstream: f.Addr, Creds: fakeCreds, TLS: f.Certs.ClientTLS("127.0.0.1"), Timeout: timeout})

			c := dialClient(t, p.Addr())
			start := time.Now()
			c.Write(startupBytes(pgproto3.ProtocolVersion30, "user", "x", "database", "appdb"))
			er := errorOf(t, readUntilReady(t, c))
			if elapsed := time.Since(start); elapsed > timeout+700*time.Millisecond {
				t.Errorf("error arrived after %v, want about %v", elapsed, timeout)
			}
			if want := `dbproxy route "testroute": login timed out in step "`; !strings.HasPrefix(er.Message, want) {
				t.Errorf("message %q does not start with %q", er.Message, want)
			}
			for _, raw := range []string{"127.0.0.1", "i/o timeout", "deadline exceeded"} {
				if strings.Contains(er.Message, raw) {
					t.Errorf("message %q contains %q", er.Message, raw)
				}
			}
			if err := p.lastError(t, 1); !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("error = %v, want context.DeadlineExceeded", err)
			}
		})
	}
}

// TestFakeReadAhead checks that bytes the server sends right after ReadyForQuery and bytes
// the client sends right after its StartupMessage both reach the other side.
func TestFakeReadAhead(t *testing.T) {
	extraNotice := &pgproto3.NoticeResponse{Severity: "NOTICE", Code: "00000", Message: "sent with ReadyForQuery"}
	gotQuery := make(chan string, 1)
	f := startFake(t, func(f *fakeServer, conn net.Conn) {
		tc, r, err := f.acceptTLS(conn)
		if err != nil {
			return
		}
		if _, err := readStartupPacket(r); err != nil {
			return
		}
		tc.Write(encode(t, &pgproto3.AuthenticationCleartextPassword{}))
		if _, err := readFrontendMessage(r); err != nil {
			return
		}
		// ReadyForQuery and a NoticeResponse in one write, so the proxy reads both at once.
		tc.Write(append(loginOK(t), encode(t, extraNotice)...))
		msg, err := readFrontendMessage(r)
		if err != nil {
			return
		}
		gotQuery <- string(msg)
		io.Copy(io.Discard, tc)
	})
	p := startProxy(t, proxyConfig{Upstream: f.Addr, Creds: fakeCreds, TLS: f.Certs.ClientTLS("127.0.0.1")})

	c := dialClient(t, p.Addr())
	query, _ := (&pgproto3.Query{String: "select 1"}).Encode(nil)
	c.Write(append(startupBytes(pgproto3.ProtocolVersion30, "user", "x"), query...))
	fe := pgproto3.NewFrontend(c, io.Discard)
	msgs := receiveUntilReady(t, fe)
	if _, ok := msgs[len(msgs)-1].(*pgproto3.ReadyForQuery); !ok {
		t.Fatalf("login ended with %#v, want ReadyForQuery", msgs[len(msgs)-1])
	}
	msg, err := fe.Receive()
	if err != nil {
		t.Fatalf("receive after ReadyForQuery: %v", err)
	}
	if diff := cmp.Diff(extraNotice, msg); diff != "" {
		t.Errorf("message after ReadyForQuery (-want +got):\n%s", diff)
	}
	select {
	case q := <-gotQuery:
		if want := string(query); q != want {
			t.Errorf("server got %q, want the client's Query %q", q, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("server never got the Query sent with the StartupMessage")
	}
}

// TestFakeStartupForwarded checks the StartupMessage the upstream receives: the client's
// version and parameters in order, user replaced, database defaulted.
func TestFakeStartupForwarded(t *testing.T) {
	tests := []struct {
		name    string
		version uint32
		params  []string
		want    []startupParam
	}{
		{
			name:    "all parameters kept",
			version: pgproto3.ProtocolVersion30,
			params: []string{"user", "client", "database", "appdb", "application_name", "psql",
				"options", "-c geqo=off", "client_encoding", "UTF8", "replication", "database", "_pq_.test", "1"},
			want: []startupParam{{"user", "app"}, {"database", "appdb"}, {"application_name", "psql"},
				{"options", "-c geqo=off"}, {"client_encoding", "UTF8"}, {"replication", "database"}, {"_pq_.test", "1"}},
		},
		{
			name:    "database defaults to stored user",
			version: pgproto3.ProtocolVersion32,
			params:  []string{"user", "client"},
			want:    []startupParam{{"user", "app"}, {"database", "app"}},
		},
		{
			name:    "no user from client",
			version: pgproto3.ProtocolVersion30,
			params:  []string{"database", "other"},
			want:    []startupParam{{"user", "app"}, {"database", "other"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := make(chan startupPacket, 1)
			f := startFake(t, func(f *fakeServer, conn net.Conn) {
				tc, r, err := f.acceptTLS(conn)
				if err != nil {
					return
				}
				p, err := readStartupPacket(r)
				if err != nil {
					return
				}
				got <- p
				tc.Write(encode(t, &pgproto3.AuthenticationMD5Password{Salt: [4]byte{1, 2, 3, 4}}))
				msg, _ := readFrontendMessage(r)
				want, _ := (&pgproto3.PasswordMessage{Password: md5Password("app", canaryPassword, [4]byte{1, 2, 3, 4})}).Encode(nil)
				if string(msg) != string(want) {
					tc.Write(encode(t, &pgproto3.ErrorResponse{Severity: "FATAL", Code: "28P01", Message: "bad md5"}))
					return
				}
				tc.Write(loginOK(t))
			})
			p := startProxy(t, proxyConfig{Upstream: f.Addr, Creds: fakeCreds, TLS: f.Certs.ClientTLS("127.0.0.1")})

			c := dialClient(t, p.Addr())
			c.Write(startupBytes(tt.version, tt.params...))
			msgs := readUntilReady(t, c)
			if _, ok := msgs[len(msgs)-1].(*pgproto3.ReadyForQuery); !ok {
				t.Fatalf("login ended with %#v, want ReadyForQuery", msgs[len(msgs)-1])
			}
			sp := <-got
			if sp.Version != tt.version {
				t.Errorf("version = %#x, want %#x", sp.Version, tt.version)
			}
			if diff := cmp.Diff(tt.want, sp.Params); diff != "" {
				t.Errorf("upstream parameters (-want +got):\n%s", diff)
			}
		})
	}
}

// TestClientProtocolErrors checks the ErrorResponse for bad opening packets.
func TestClientProtocolErrors(t *testing.T) {
	tests := []struct {
		name     string
		send     []byte
		wantCode string
		wantText string
	}{
		{"protocol 2.0", startupBytes(2<<16, "user", "x"), codeFeatureNotSupported, "unsupported frontend protocol 2.0"},
		{"protocol 4.0", startupBytes(4<<16, "user", "x"), codeFeatureNotSupported, "unsupported frontend protocol 4.0"},
		{"length too large", []byte{0, 1, 0, 0, 0, 3, 0, 0}, codeProtocolViolation, "invalid length"},
		{"length too small", []byte{0, 0, 0, 4}, codeProtocolViolation, "invalid length"},
		{"missing terminator", []byte{0, 0, 0, 13, 0, 3, 0, 0, 'u', 's', 'e', 'r', 0}, codeProtocolViolation, "invalid startup packet layout"},
		{"too many SSLRequests", repeat(sslRequest, maxEncryptionRequests+1), codeProtocolViolation, "more than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startFake(t, func(_ *fakeServer, conn net.Conn) { io.Copy(io.Discard, conn) })
			p := startProxy(t, proxyConfig{Upstream: f.Addr, Creds: fakeCreds, TLS: f.Certs.ClientTLS("127.0.0.1")})
			c := dialClient(t, p.Addr())
			c.Write(tt.send)
			r := bufio.NewReader(c)
			for {
				b, err := r.Peek(1)
				if err != nil {
					t.Fatalf("read reply: %v", err)
				}
				if b[0] != 'N' {
					break
				}
				r.ReadByte()
			}
			er := errorOf(t, readUntilReady(t, &readerConn{Conn: c, r: r}))
			if er.Code != tt.wantCode {
				t.Errorf("SQLSTATE = %s, want %s (message %q)", er.Code, tt.wantCode, er.Message)
			}
			if !strings.Contains(er.Message, tt.wantText) {
				t.Errorf("message %q does not contain %q", er.Message, tt.wantText)
			}
			if err := p.lastError(t, 1); !errors.Is(err, ErrClientProtocol) {
				t.Errorf("error = %v, want ErrClientProtocol", err)
			}
		})
	}
}

func repeat(b []byte, n int) []byte {
	var out []byte
	for range n {
		out = append(out, b...)
	}
	return out
}

type readerConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *readerConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// TestStoredUserWithNUL checks that a stored user name with a NUL byte is refused before
// anything is sent upstream.
func TestStoredUserWithNUL(t *testing.T) {
	f := startFake(t, func(_ *fakeServer, conn net.Conn) { io.Copy(io.Discard, conn) })
	creds := credsource.Credentials{Username: "app\x00database\x00postgres", Password: canaryPassword}
	p := startProxy(t, proxyConfig{Upstream: f.Addr, Creds: creds, TLS: f.Certs.ClientTLS("127.0.0.1")})
	c := dialClient(t, p.Addr())
	c.Write(startupBytes(pgproto3.ProtocolVersion30, "user", "x"))
	er := errorOf(t, readUntilReady(t, c))
	if !strings.Contains(er.Message, "NUL") {
		t.Errorf("message %q does not mention the NUL byte", er.Message)
	}
	checkNoCanary(t, p, er.Message)
}
