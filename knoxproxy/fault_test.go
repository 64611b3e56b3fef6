package knoxproxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"

	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/packet"
	"github.com/jackc/pgx/v5"
	"go.mongodb.org/mongo-driver/x/bsonx/bsoncore"

	"github.com/knoxcall/dbproxy/credsource"
	"github.com/knoxcall/dbproxy/internal/dbtest"
	"github.com/knoxcall/dbproxy/peercred"
)

// faultRoute is the route name in the fault tests; every agent error must name it.
const faultRoute = "faulty"

// core is a Server with one or more routes, a counting credential source and a debug log.
type core struct {
	srv    *Server
	source *countingSource
	logs   *dbtest.LogBuffer
	dials  *atomic.Int64
}

type coreOptions struct {
	peer   peercred.Checker
	source credsource.Source // nil means a countingSource with app / canaryPassword
}

// startCore serves routes until the test ends. Each route's SecretID defaults to "sec".
func startCore(t *testing.T, routes []Route, o coreOptions) *core {
	t.Helper()
	src := &countingSource{Static: credsource.NewStatic(map[string]credsource.Credentials{
		"sec": {Username: "app", Password: canaryPassword},
	})}
	var source credsource.Source = src
	if o.source != nil {
		source = o.source
	}
	if o.peer == nil {
		o.peer = fixedPeer{cred: peercred.Cred{UID: 1000, PID: 42}}
	}
	for i := range routes {
		if routes[i].SecretID == "" {
			routes[i].SecretID = "sec"
		}
		if routes[i].LocalPort == 0 {
			routes[i].LocalPort = dbtest.FreePort(t)
		}
	}
	logs := &dbtest.LogBuffer{}
	var dials atomic.Int64
	var d net.Dialer
	srv, err := New(Config{
		Routes:          routes,
		Credentials:     source,
		PeerChecker:     o.peer,
		Logger:          slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		ShutdownTimeout: 2 * time.Second,
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials.Add(1)
			return d.DialContext(ctx, network, addr)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	select {
	case <-srv.Ready():
	case err := <-done:
		cancel()
		t.Fatalf("Serve: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			t.Error("Serve did not return 15 s after its context ended")
		}
		if strings.Contains(logs.String(), canaryPassword) {
			t.Errorf("log contains the stored password:\n%s", logs)
		}
	})
	return &core{srv: srv, source: src, logs: logs, dials: &dials}
}

// waitIdle waits until no route of c has an open session.
func (c *core) waitIdle(t *testing.T, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		open := int64(0)
		for _, st := range c.srv.Stats() {
			open += st.OpenSessions
		}
		if open == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions still open %v after the client side ended", open, limit)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// scriptedUpstream is a plain TCP server that runs script on each accepted connection. It
// counts connections and records when the agent closes its side.
type scriptedUpstream struct {
	ln     net.Listener
	conns  atomic.Int64
	closed atomic.Int64 // connections on which a read returned an error
	wg     sync.WaitGroup
}

// startScripted starts the server; a nil script drains each connection.
func startScripted(t *testing.T, script func(c net.Conn)) *scriptedUpstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &scriptedUpstream{ln: ln}
	if script == nil {
		script = func(c net.Conn) { u.drain(c) }
	}
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
				c.SetDeadline(time.Now().Add(20 * time.Second))
				script(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		u.wg.Wait()
	})
	return u
}

func (u *scriptedUpstream) port() int { return u.ln.Addr().(*net.TCPAddr).Port }

// drain reads c until the agent closes it, and counts the close.
func (u *scriptedUpstream) drain(c io.Reader) {
	io.Copy(io.Discard, c)
	u.closed.Add(1)
}

// faultProtocol describes how a raw client opens a session of one protocol, and how a fake
// upstream reaches the point where TLS starts.
type faultProtocol struct {
	name string
	// opening is what the client sends first; nil when the server speaks first (MySQL).
	opening []byte
	// respondToGreeting, set when the server speaks first, reads the agent's greeting from
	// r and sends the client's login packet to c. It returns whether it read a greeting.
	// Anything other than a greeting, such as an ERR in its place, stays unread in r.
	respondToGreeting func(r *bufio.Reader, c net.Conn) (greeted bool, err error)
	// startTLS plays the upstream up to the start of TLS: it sends what the server sends
	// first, then reads the agent's bytes that precede TLS and replies to them.
	startTLS func(c net.Conn) error
}

var faultProtocols = []faultProtocol{
	{name: "postgres", opening: pgStartup("someone", "appdb"), startTLS: pgAcceptSSLRequest},
	{name: "redis", opening: []byte("PING\r\n"), startTLS: func(net.Conn) error { return nil }},
	{name: "mongodb", opening: mongoHello(1), startTLS: func(net.Conn) error { return nil }},
	{name: "mysql", respondToGreeting: mysqlRespondToGreeting, startTLS: mysqlAcceptSSLRequest},
}

// pgStartup encodes a protocol 3.0 StartupMessage.
func pgStartup(user, database string) []byte {
	body := []byte{0, 3, 0, 0}
	for _, s := range []string{"user", user, "database", database} {
		body = append(append(body, s...), 0)
	}
	body = append(body, 0)
	return append(binary.BigEndian.AppendUint32(nil, uint32(4+len(body))), body...)
}

// pgAcceptSSLRequest reads the agent's SSLRequest and answers 'S'.
func pgAcceptSSLRequest(c net.Conn) error {
	var req [8]byte
	if _, err := io.ReadFull(c, req[:]); err != nil {
		return err
	}
	if binary.BigEndian.Uint32(req[4:]) != 80877103 {
		return fmt.Errorf("got %x, want an SSLRequest", req)
	}
	_, err := c.Write([]byte{'S'})
	return err
}

// mongoHello encodes an OP_MSG hello on admin.
func mongoHello(requestID int32) []byte {
	doc := bsoncore.NewDocumentBuilder().AppendInt32("hello", 1).AppendString("$db", "admin").Build()
	msg := make([]byte, 16, 16+5+len(doc))
	binary.LittleEndian.PutUint32(msg[4:], uint32(requestID))
	binary.LittleEndian.PutUint32(msg[12:], 2013) // OP_MSG
	msg = append(msg, 0, 0, 0, 0, 0)              // flagBits, section kind 0
	msg = append(msg, doc...)
	binary.LittleEndian.PutUint32(msg[0:], uint32(len(msg)))
	return msg
}

// mysqlFaultCapabilities are the capabilities in the fake MySQL upstream's greeting. The
// agent requires CLIENT_SSL and CLIENT_PROTOCOL_41.
const mysqlFaultCapabilities = mysql.CLIENT_LONG_PASSWORD | mysql.CLIENT_PROTOCOL_41 |
	mysql.CLIENT_SSL | mysql.CLIENT_SECURE_CONNECTION | mysql.CLIENT_PLUGIN_AUTH

// Lengths in the MySQL login packets.
const (
	mysqlHeaderLen     = 4  // 3-byte payload length and 1-byte sequence id
	mysqlScrambleLen   = 20 // auth-plugin-data that MySQL and MariaDB servers send
	mysqlSSLRequestLen = 32 // capabilities, max packet size, character set, 23 reserved bytes
)

// mysqlGreeting encodes a Handshake v10 payload offering mysqlFaultCapabilities and the
// mysql_native_password plugin, after room for the header that packet.Conn.WritePacket
// fills in.
func mysqlGreeting() []byte {
	caps := mysqlFaultCapabilities
	scramble := mysql.RandomBuf(mysqlScrambleLen) // printable bytes, so no NUL inside
	p := make([]byte, mysqlHeaderLen, 128)
	p = append(p, mysql.ClassicProtocolVersion)
	p = append(p, "8.0.36-fault"...)
	p = append(p, 0)
	p = binary.LittleEndian.AppendUint32(p, 1) // connection id
	p = append(p, scramble[:8]...)
	p = append(p, 0) // filler
	p = binary.LittleEndian.AppendUint16(p, uint16(caps))
	p = append(p, mysql.DEFAULT_COLLATION_ID)
	p = binary.LittleEndian.AppendUint16(p, mysql.SERVER_STATUS_AUTOCOMMIT)
	p = binary.LittleEndian.AppendUint16(p, uint16(caps>>16))
	p = append(p, mysqlScrambleLen+1)  // auth-plugin-data length, with the NUL
	p = append(p, make([]byte, 10)...) // reserved
	p = append(p, scramble[8:]...)
	p = append(p, 0)
	p = append(p, mysql.AUTH_NATIVE_PASSWORD...)
	return append(p, 0)
}

// mysqlAcceptSSLRequest sends a Handshake v10 greeting and reads the agent's SSLRequest,
// the 32-byte HandshakeResponse41 prefix with CLIENT_SSL set, sent as sequence id 1.
func mysqlAcceptSSLRequest(c net.Conn) error {
	// NewTLSConn reads without a buffer of its own, so the TLS ClientHello that follows the
	// SSLRequest stays unread in c. It also checks the sequence ids.
	pc := packet.NewTLSConn(c)
	if err := pc.WritePacket(mysqlGreeting()); err != nil {
		return err
	}
	req, err := pc.ReadPacket()
	if err != nil {
		return fmt.Errorf("read SSLRequest: %w", err)
	}
	if len(req) != mysqlSSLRequestLen || binary.LittleEndian.Uint32(req)&mysql.CLIENT_SSL == 0 {
		return fmt.Errorf("got %x, want an SSLRequest", req)
	}
	return nil
}

// mysqlRespondToGreeting reads a Handshake v10 greeting from r and sends c a minimal
// HandshakeResponse41 (sequence id 1): user name, empty auth response, no plugin name.
func mysqlRespondToGreeting(r *bufio.Reader, c net.Conn) (bool, error) {
	start, err := r.Peek(mysqlHeaderLen + 1)
	if err != nil || start[mysqlHeaderLen] != mysql.ClassicProtocolVersion {
		return false, nil // not a greeting: openRaw returns the ERR or the read error
	}
	n := int(start[0]) | int(start[1])<<8 | int(start[2])<<16
	if _, err := r.Discard(mysqlHeaderLen + n); err != nil {
		return false, fmt.Errorf("read greeting: %w", err)
	}

	p := make([]byte, mysqlHeaderLen, 64)
	caps := mysql.CLIENT_LONG_PASSWORD | mysql.CLIENT_PROTOCOL_41 | mysql.CLIENT_SECURE_CONNECTION
	p = binary.LittleEndian.AppendUint32(p, caps)
	p = binary.LittleEndian.AppendUint32(p, uint32(mysql.MaxPayloadLen)) // max packet size
	p = append(p, mysql.DEFAULT_COLLATION_ID)
	p = append(p, make([]byte, 23)...) // reserved
	p = append(p, "someone"...)
	p = append(p, 0)
	p = append(p, 0) // auth response length
	pc := packet.NewTLSConn(c)
	pc.Sequence = 1
	if err := pc.WritePacket(p); err != nil {
		return false, fmt.Errorf("send HandshakeResponse41: %w", err)
	}
	return true, nil
}

// clientResult is what a raw client got from the agent before the connection ended.
type clientResult struct {
	reply   []byte
	elapsed time.Duration
	err     error // a read error other than EOF, such as the test's own deadline
	// greeted is set when the client responded to a server greeting, so reply does not
	// contain the greeting.
	greeted bool
}

// openRaw connects to addr, sends the protocol's opening bytes or responds to its greeting,
// and reads until the agent closes the connection or limit passes.
func openRaw(t *testing.T, addr string, p faultProtocol, limit time.Duration) clientResult {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	c.SetDeadline(start.Add(limit))
	if p.opening != nil {
		if _, err := c.Write(p.opening); err != nil {
			t.Fatalf("send opening bytes: %v", err)
		}
	}
	r := bufio.NewReader(c)
	greeted := false
	if p.respondToGreeting != nil {
		if greeted, err = p.respondToGreeting(r, c); err != nil {
			t.Fatalf("respond to the greeting: %v", err)
		}
	}
	reply, err := io.ReadAll(r)
	return clientResult{reply: reply, elapsed: time.Since(start), err: err, greeted: greeted}
}

// checkNamedError fails the test unless res is a protocol error naming the route that
// arrived within limit and was followed by a close.
func checkNamedError(t *testing.T, p faultProtocol, res clientResult, limit time.Duration) {
	t.Helper()
	if res.err != nil {
		t.Fatalf("client read: %v after %v (got %q); want the agent to reply and close", res.err, res.elapsed, res.reply)
	}
	if res.elapsed > limit {
		t.Errorf("client waited %v for the error, want at most %v", res.elapsed, limit)
	}
	if !bytes.Contains(res.reply, []byte(`route "`+faultRoute+`"`)) {
		t.Errorf("client got %q, want an error naming route %q", res.reply, faultRoute)
	}
	if bytes.Contains(res.reply, []byte(canaryPassword)) {
		t.Errorf("client reply contains the stored password: %q", res.reply)
	}
	wantFirst := map[string]byte{"postgres": 'E', "redis": '-'}[p.name]
	if wantFirst != 0 && len(res.reply) > 0 && res.reply[0] != wantFirst {
		t.Errorf("reply starts with %q, want %q", res.reply[0], wantFirst)
	}
	if p.name == "mysql" {
		checkMySQLErr(t, res)
	}
}

// checkMySQLErr fails the test unless res.reply is one ERR packet whose sequence id follows
// the client's last packet: 0 in place of the greeting, or 2 after HandshakeResponse41.
func checkMySQLErr(t *testing.T, res clientResult) {
	t.Helper()
	if len(res.reply) < mysqlHeaderLen+1 || res.reply[mysqlHeaderLen] != mysql.ERR_HEADER {
		t.Errorf("reply %q is not a MySQL ERR packet", res.reply)
		return
	}
	n := int(res.reply[0]) | int(res.reply[1])<<8 | int(res.reply[2])<<16
	if got := len(res.reply) - mysqlHeaderLen; got != n {
		t.Errorf("reply has %d bytes after the header, want one packet of %d", got, n)
	}
	wantSeq := byte(0)
	if res.greeted {
		wantSeq = 2
	}
	if got := res.reply[3]; got != wantSeq {
		t.Errorf("ERR has sequence id %d, want %d", got, wantSeq)
	}
}

func faultRouteFor(p faultProtocol, upstreamPort int, certs *dbtest.Certs) Route {
	return Route{
		Name: faultRoute, Protocol: p.name, UpstreamHost: "127.0.0.1", UpstreamPort: upstreamPort,
		TLS: TLS{CAFile: certs.CAFile}, LoginTimeout: 5 * time.Second,
	}
}

// TestFaultUpstreamSilent checks that an upstream that accepts TCP and never answers ends
// the login at the login timeout with a protocol error to the client, not a hang.
func TestFaultUpstreamSilent(t *testing.T) {
	const loginTimeout = 500 * time.Millisecond
	for _, p := range faultProtocols {
		t.Run(p.name, func(t *testing.T) {
			certs := dbtest.NewCerts(t, t.TempDir())
			up := startScripted(t, nil)
			route := faultRouteFor(p, up.port(), certs)
			route.LoginTimeout = loginTimeout
			c := startCore(t, []Route{route}, coreOptions{})

			res := openRaw(t, c.srv.Addr(faultRoute).String(), p, 10*time.Second)
			checkNamedError(t, p, res, loginTimeout+1500*time.Millisecond)
			if res.elapsed < loginTimeout-50*time.Millisecond {
				t.Errorf("error after %v, before the login timeout of %v", res.elapsed, loginTimeout)
			}
			c.waitIdle(t, 5*time.Second)
			waitCount(t, &up.closed, 1, 5*time.Second, "upstream connections closed by the agent")
			if logs := c.logs.String(); !strings.Contains(logs, "outcome="+outcomeLoginTimeout) {
				t.Errorf("log lacks outcome %s:\n%s", outcomeLoginTimeout, logs)
			}
		})
	}
}

// TestFaultUpstreamClosesMidHandshake checks that an upstream that closes the connection
// during the login gives the client a prompt error, well before the login timeout.
func TestFaultUpstreamClosesMidHandshake(t *testing.T) {
	type stage struct {
		name   string
		script func(p faultProtocol, cert tls.Certificate, c net.Conn)
	}
	stages := []stage{
		{name: "before tls", script: func(p faultProtocol, _ tls.Certificate, c net.Conn) {
			if p.opening != nil {
				c.Read(make([]byte, 1))
			}
		}},
		{name: "after tls", script: func(p faultProtocol, cert tls.Certificate, c net.Conn) {
			if p.startTLS(c) != nil {
				return
			}
			tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
			if tc.Handshake() != nil {
				return
			}
			tc.Read(make([]byte, 1))
			tc.Close()
		}},
		{name: "half a reply", script: func(p faultProtocol, cert tls.Certificate, c net.Conn) {
			if p.startTLS(c) != nil {
				return
			}
			tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
			if tc.Handshake() != nil {
				return
			}
			tc.Read(make([]byte, 4096))
			half := map[string][]byte{
				"postgres": {'R', 0, 0, 0, 12, 0, 0},          // AuthenticationSASL cut short
				"redis":    []byte("+O"),                      // +OK without its CRLF
				"mongodb":  {0x40, 0, 0, 0, 1, 0, 0, 0, 1, 0}, // a 64-byte header cut short
				"mysql":    {7, 0, 0, 3, mysql.OK_HEADER},     // a 7-byte OK packet cut short
			}[p.name]
			tc.Write(half)
			tc.Close()
		}},
	}
	for _, p := range faultProtocols {
		for _, st := range stages {
			t.Run(p.name+"/"+st.name, func(t *testing.T) {
				certs := dbtest.NewCerts(t, t.TempDir())
				cert, err := tls.LoadX509KeyPair(certs.ServerCert, certs.ServerKey)
				if err != nil {
					t.Fatal(err)
				}
				up := startScripted(t, func(c net.Conn) { st.script(p, cert, c) })
				c := startCore(t, []Route{faultRouteFor(p, up.port(), certs)}, coreOptions{})

				res := openRaw(t, c.srv.Addr(faultRoute).String(), p, 10*time.Second)
				checkNamedError(t, p, res, 2*time.Second)
				c.waitIdle(t, 5*time.Second)
				if logs := c.logs.String(); strings.Contains(logs, "outcome="+outcomeOK) {
					t.Errorf("a failed login was logged as ok:\n%s", logs)
				}
			})
		}
	}
}

// TestFaultUpstreamOversizedReply checks that a reply longer than the protocol allows ends
// the login promptly with an upstream protocol error, without waiting for the bytes.
func TestFaultUpstreamOversizedReply(t *testing.T) {
	oversized := map[string][]byte{
		// A message type with a length word of 2 GiB - 1; the login allows 30000 bytes.
		"postgres": {'R', 0x7f, 0xff, 0xff, 0xff},
		// A status line with no CRLF, longer than any reply to AUTH.
		"redis": append([]byte("+"), bytes.Repeat([]byte("x"), 64<<10)...),
		// A 16-byte header announcing 48000001 bytes, one more than maxMessageSizeBytes.
		"mongodb": append(binary.LittleEndian.AppendUint32(nil, 48000001), make([]byte, 12)...),
		// A packet header with sequence id 3, the reply to the agent's HandshakeResponse41. It
		// announces 16 MiB - 1 bytes, the maximum payload of one packet, and the login
		// accepts 1 MiB.
		"mysql": {0xff, 0xff, 0xff, 3},
	}
	for _, p := range faultProtocols {
		t.Run(p.name, func(t *testing.T) {
			certs := dbtest.NewCerts(t, t.TempDir())
			cert, err := tls.LoadX509KeyPair(certs.ServerCert, certs.ServerKey)
			if err != nil {
				t.Fatal(err)
			}
			var closed atomic.Int64
			up := startScripted(t, func(c net.Conn) {
				if p.startTLS(c) != nil {
					return
				}
				tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
				if tc.Handshake() != nil {
					return
				}
				tc.Read(make([]byte, 4096))
				tc.Write(oversized[p.name])
				// Keep the connection open: the agent must not wait for the rest.
				io.Copy(io.Discard, tc)
				closed.Add(1)
			})
			c := startCore(t, []Route{faultRouteFor(p, up.port(), certs)}, coreOptions{})

			res := openRaw(t, c.srv.Addr(faultRoute).String(), p, 10*time.Second)
			checkNamedError(t, p, res, 2*time.Second)
			c.waitIdle(t, 5*time.Second)
			waitCount(t, &closed, 1, 5*time.Second, "upstream connections closed by the agent")
			logs := c.logs.String()
			if !strings.Contains(logs, "outcome="+outcomeUpstreamProtocol) {
				t.Errorf("log lacks outcome %s:\n%s", outcomeUpstreamProtocol, logs)
			}
		})
	}
}

// badCert is an upstream certificate that verification must reject.
type badCert struct {
	name string
	make func(t *testing.T, certs *dbtest.Certs) tls.Certificate
	// want is the text the client's error contains.
	want string
}

var badCerts = []badCert{
	{"expired", func(t *testing.T, certs *dbtest.Certs) tls.Certificate {
		return issueFromCA(t, certs, &x509.Certificate{
			Subject:     pkix.Name{CommonName: "expired"},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
			NotBefore:   time.Now().Add(-48 * time.Hour),
			NotAfter:    time.Now().Add(-24 * time.Hour),
		})
	}, "expired"},
	{"self-signed", func(t *testing.T, _ *dbtest.Certs) tls.Certificate {
		return selfSigned(t)
	}, "unknown authority"},
	{"other host", func(t *testing.T, certs *dbtest.Certs) tls.Certificate {
		certFile, keyFile := certs.IssueServerCert(t, "otherhost", []string{"db.other.test"}, []net.IP{net.ParseIP("10.9.8.7")})
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		return cert
	}, "127.0.0.1"},
}

// TestFaultUpstreamCertificate checks that an upstream certificate that is expired,
// self-signed or issued for another host ends the login with a TLS error to the client,
// before the agent sends anything but the TLS handshake, and with outcome
// upstream_tls_error.
func TestFaultUpstreamCertificate(t *testing.T) {
	for _, p := range faultProtocols {
		for _, bc := range badCerts {
			t.Run(p.name+"/"+bc.name, func(t *testing.T) {
				certs := dbtest.NewCerts(t, t.TempDir())
				cert := bc.make(t, certs)
				var plaintext atomic.Int64
				up := startScripted(t, func(c net.Conn) {
					if p.startTLS(c) != nil {
						return
					}
					tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
					if tc.Handshake() != nil {
						return
					}
					n, _ := io.Copy(io.Discard, tc)
					plaintext.Add(n)
				})
				c := startCore(t, []Route{faultRouteFor(p, up.port(), certs)}, coreOptions{})

				res := openRaw(t, c.srv.Addr(faultRoute).String(), p, 10*time.Second)
				checkNamedError(t, p, res, 2*time.Second)
				if !bytes.Contains(res.reply, []byte(bc.want)) {
					t.Errorf("client got %q, want it to mention %q", res.reply, bc.want)
				}
				c.waitIdle(t, 5*time.Second)
				if n := plaintext.Load(); n != 0 {
					t.Errorf("upstream received %d bytes inside TLS, want 0", n)
				}
				if logs := c.logs.String(); !strings.Contains(logs, "outcome="+outcomeUpstreamTLS) {
					t.Errorf("log lacks outcome %s:\n%s", outcomeUpstreamTLS, logs)
				}
			})
		}
	}
}

// issueFromCA signs tmpl with the CA of certs (its ca.key is next to ca.pem).
func issueFromCA(t *testing.T, certs *dbtest.Certs, tmpl *x509.Certificate) tls.Certificate {
	t.Helper()
	caCert := readPEMCert(t, certs.CAFile)
	keyPEM, err := os.ReadFile(filepath.Join(certs.Dir, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		t.Fatal("ca.key: no PEM block")
	}
	caKey, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return signCert(t, tmpl, caCert, caKey)
}

// selfSigned returns a certificate for 127.0.0.1 that signs itself.
func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7),
		Subject:      pkix.Name{CommonName: "self-signed"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func signCert(t *testing.T, tmpl, ca *x509.Certificate, caKey any) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func readPEMCert(t *testing.T, file string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("%s: no PEM block", file)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func waitCount(t *testing.T, n *atomic.Int64, want int64, limit time.Duration, what string) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for n.Load() < want {
		if time.Now().After(deadline) {
			t.Fatalf("%s = %d after %v, want %d", what, n.Load(), limit, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestFaultClientSilent checks that a client that opens TCP and sends nothing is closed at
// the login timeout, before any credential fetch or upstream dial when the client speaks
// first.
func TestFaultClientSilent(t *testing.T) {
	const loginTimeout = 400 * time.Millisecond
	for _, p := range faultProtocols {
		if p.opening == nil {
			continue // the MySQL server speaks first, so the agent dials before the client speaks
		}
		t.Run(p.name, func(t *testing.T) {
			certs := dbtest.NewCerts(t, t.TempDir())
			up := startScripted(t, nil)
			route := faultRouteFor(p, up.port(), certs)
			route.LoginTimeout = loginTimeout
			c := startCore(t, []Route{route}, coreOptions{})

			silent := p
			silent.opening = nil
			res := openRaw(t, c.srv.Addr(faultRoute).String(), silent, 10*time.Second)
			if res.err != nil {
				t.Fatalf("client read: %v after %v; want the agent to close the connection", res.err, res.elapsed)
			}
			if res.elapsed < loginTimeout-50*time.Millisecond || res.elapsed > loginTimeout+time.Second {
				t.Errorf("silent client closed after %v, want about %v", res.elapsed, loginTimeout)
			}
			if len(res.reply) != 0 {
				t.Errorf("silent client got %q, want nothing", res.reply)
			}
			c.waitIdle(t, 5*time.Second)
			if n := c.source.fetches.Load(); n != 0 {
				t.Errorf("credential fetches = %d, want 0", n)
			}
			if n := up.conns.Load(); n != 0 {
				t.Errorf("upstream connections = %d, want 0", n)
			}
		})
	}
}

// TestFaultClientLeavesMidHandshake checks that a client that disconnects during the login
// leaves no session, upstream connection or goroutine behind: after half its opening bytes,
// and after all of them while the upstream has not replied yet. The agent notices the
// client only when it next reads from it, so a session waiting on the upstream ends at the
// login timeout; the goroutine check of TestMain covers what remains.
func TestFaultClientLeavesMidHandshake(t *testing.T) {
	const loginTimeout = time.Second
	for _, p := range faultProtocols {
		if p.opening == nil {
			continue
		}
		for _, stage := range []string{"half opening", "upstream pending"} {
			t.Run(p.name+"/"+stage, func(t *testing.T) {
				certs := dbtest.NewCerts(t, t.TempDir())
				up := startScripted(t, nil)
				route := faultRouteFor(p, up.port(), certs)
				route.LoginTimeout = loginTimeout
				c := startCore(t, []Route{route}, coreOptions{})

				conn, err := net.Dial("tcp", c.srv.Addr(faultRoute).String())
				if err != nil {
					t.Fatal(err)
				}
				sent := p.opening
				if stage == "half opening" {
					sent = sent[:len(sent)/2]
				}
				conn.Write(sent)
				if stage == "upstream pending" {
					waitCount(t, &up.conns, 1, 5*time.Second, "upstream connections")
				} else {
					time.Sleep(50 * time.Millisecond)
				}
				start := time.Now()
				conn.Close()

				c.waitIdle(t, loginTimeout+2*time.Second)
				t.Logf("session ended %v after the client left", time.Since(start).Round(time.Millisecond))
				// The core reads only the first bytes before it fetches and dials, so a
				// half opening may already have an upstream connection; none may stay open.
				waitCount(t, &up.closed, up.conns.Load(), 5*time.Second, "upstream connections closed by the agent")
			})
		}
	}
}

// TestFaultClientClaimsLargeMessage checks that clients whose opening message announces
// the protocol's maximum length and then sends nothing cost the agent little memory while
// they wait for the login timeout.
func TestFaultClientClaimsLargeMessage(t *testing.T) {
	const clients = 10
	claims := map[string][]byte{
		// A StartupMessage length word of 10000, PostgreSQL's MAX_STARTUP_PACKET_LENGTH.
		"postgres": {0, 0, 0x27, 0x10, 0, 3, 0, 0},
		// A bulk string of 512 MB, Redis's default proto-max-bulk-len.
		"redis": []byte("*1\r\n$536870912\r\nxx"),
		// An OP_MSG header of 48000000 bytes, MongoDB's maxMessageSizeBytes.
		"mongodb": append(binary.LittleEndian.AppendUint32(nil, 48000000),
			0, 0, 0, 1, 0, 0, 0, 0, 0xdd, 0x07, 0, 0),
	}
	for _, p := range faultProtocols {
		claim, ok := claims[p.name]
		if !ok {
			continue
		}
		t.Run(p.name, func(t *testing.T) {
			certs := dbtest.NewCerts(t, t.TempDir())
			up := startScripted(t, nil)
			route := faultRouteFor(p, up.port(), certs)
			route.LoginTimeout = 20 * time.Second
			c := startCore(t, []Route{route}, coreOptions{})

			runtime.GC()
			var before runtime.MemStats
			runtime.ReadMemStats(&before)
			var conns []net.Conn
			for range clients {
				conn, err := net.Dial("tcp", c.srv.Addr(faultRoute).String())
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				conn.Write(claim)
				conns = append(conns, conn)
			}
			// Give every session time to read its header and allocate what it will.
			time.Sleep(500 * time.Millisecond)
			var during runtime.MemStats
			runtime.ReadMemStats(&during)
			grown := int64(during.HeapAlloc) - int64(before.HeapAlloc)
			perClient := grown / clients
			t.Logf("heap grew by %d KiB for %d clients (%d KiB each)", grown>>10, clients, perClient>>10)
			for _, conn := range conns {
				conn.Close()
			}
			// Each session may hold its buffers and one TLS connection upstream: 1 MiB
			// per client is far above that and far below a preallocated message.
			const maxPerClient = 1 << 20
			if perClient > maxPerClient {
				t.Errorf("heap grew by %d KiB per client, want at most %d KiB", perClient>>10, maxPerClient>>10)
			}
		})
	}
}

// startFaultPG starts PostgreSQL with the stored canary password and an agent route to it.
func startFaultPG(t *testing.T) (*dbtest.Postgres, *core, string) {
	t.Helper()
	pg := dbtest.StartPostgres(t, dbtest.PostgresOptions{})
	pg.Exec(t, "ALTER ROLE app PASSWORD '"+canaryPassword+"'")
	c := startCore(t, []Route{{
		Name: faultRoute, Protocol: "postgres", UpstreamHost: pg.Host, UpstreamPort: pg.Port,
		TLS: TLS{CAFile: pg.Certs.CAFile}, LoginTimeout: 10 * time.Second,
	}}, coreOptions{})
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb sslmode=disable connect_timeout=10",
		c.srv.Addr(faultRoute).(*net.TCPAddr).Port)
	return pg, c, dsn
}

// appBackends counts the server sessions of the role app.
func appBackends(t *testing.T, pg *dbtest.Postgres) string {
	t.Helper()
	return pg.Exec(t, "select count(*) from pg_stat_activity where usename = 'app'")
}

// TestFaultUpstreamRestart checks that sessions live across a PostgreSQL restart get an
// error, not a hang, and that the agent serves new sessions once the server is back.
func TestFaultUpstreamRestart(t *testing.T) {
	const sessions = 5
	pg, c, dsn := startFaultPG(t)
	ctx := t.Context()
	var conns []*pgx.Conn
	for range sessions {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(ctx, "select 1"); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, conn)
	}

	pg.Restart(t)

	for i, conn := range conns {
		qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		start := time.Now()
		_, err := conn.Exec(qctx, "select 1")
		timedOut := qctx.Err() != nil
		cancel()
		if err == nil {
			t.Errorf("session %d: query after the restart succeeded, want an error", i)
			continue
		}
		if timedOut {
			t.Errorf("session %d: query hung until its timeout: %v", i, err)
		}
		t.Logf("session %d: %v after %v", i, err, time.Since(start).Round(time.Millisecond))
	}
	for _, conn := range conns {
		conn.Close(ctx)
	}
	c.waitIdle(t, 5*time.Second)

	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("new session after the restart: %v", err)
	}
	defer conn.Close(ctx)
	var user string
	if err := conn.QueryRow(ctx, "select current_user").Scan(&user); err != nil {
		t.Fatalf("query on a new session: %v", err)
	}
	if user != "app" {
		t.Errorf("current_user = %q, want app", user)
	}
}

// TestFaultClientKilledInTransaction checks that the server session of a client killed with
// SIGKILL inside a transaction ends promptly, for psql and for a pgx program.
func TestFaultClientKilledInTransaction(t *testing.T) {
	for _, client := range []string{"psql", "pgx"} {
		t.Run(client, func(t *testing.T) {
			pg, c, dsn := startFaultPG(t)
			var cmd *exec.Cmd
			if client == "psql" {
				cmd = exec.Command(dbtest.LookPath(t, "psql"), dsn, "-XAtq")
				cmd.Env = append(os.Environ(), "PGPASSWORD=", "PGUSER=")
				// psql exits at the end of its input; a pipe that stays open keeps it in the
				// transaction.
				pr, pw, err := os.Pipe()
				if err != nil {
					t.Fatal(err)
				}
				defer pw.Close()
				defer pr.Close()
				cmd.Stdin = pr
				pw.WriteString("BEGIN;\nSELECT txid_current();\n")
			} else {
				cmd = exec.Command(os.Args[0], "-test.run=^TestFaultPgxHelperProcess$")
				cmd.Env = append(os.Environ(), "KNOXPROXY_PGX_HELPER_DSN="+dsn)
			}
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Wait()
			defer cmd.Process.Kill()
			waitUntil(t, 15*time.Second, func() bool {
				return pg.Exec(t, "select count(*) from pg_stat_activity where usename = 'app' "+
					"and state = 'idle in transaction'") == "1"
			}, func() string { return "no idle-in-transaction session of app; client output: " + out.String() })

			start := time.Now()
			if err := cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			cmd.Wait()
			waitUntil(t, 5*time.Second, func() bool { return appBackends(t, pg) == "0" },
				func() string { return "server session of the killed client still open" })
			t.Logf("server session ended %v after SIGKILL", time.Since(start).Round(time.Millisecond))
			c.waitIdle(t, 5*time.Second)
		})
	}
}

// TestFaultPgxHelperProcess is the pgx client that TestFaultClientKilledInTransaction runs
// and kills: it opens a transaction and waits.
func TestFaultPgxHelperProcess(t *testing.T) {
	dsn := os.Getenv("KNOXPROXY_PGX_HELPER_DSN")
	if dsn == "" {
		t.Skip("helper process of TestFaultClientKilledInTransaction")
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "begin"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "select txid_current()"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Minute)
}

func waitUntil(t *testing.T, limit time.Duration, cond func() bool, msg func() string) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", limit, msg())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestFaultHalfClose checks that when one side shuts down its writing direction, the other
// direction keeps flowing to its end.
func TestFaultHalfClose(t *testing.T) {
	t.Run("client", func(t *testing.T) {
		h := startHarness(t, harnessOptions{})
		c := h.dial(t)
		r := bufio.NewReader(c)
		io.WriteString(c, "LOGIN\n")
		if got := readLine(t, r); got != "WELCOME\n" {
			t.Fatalf("got %q, want WELCOME", got)
		}
		// More than the socket buffers hold, so most of the echo is still on its way back
		// when the client shuts down its side.
		payload := bytes.Repeat([]byte("0123456789abcdef0123456789abcde\n"), 64<<10)
		writeErr := make(chan error, 1)
		go func() {
			_, err := c.Write(payload)
			if err == nil {
				err = c.(*net.TCPConn).CloseWrite()
			}
			writeErr <- err
		}()
		echo, err := io.ReadAll(r)
		if err != nil {
			t.Fatalf("read the echo: %v", err)
		}
		if err := <-writeErr; err != nil {
			t.Fatalf("write: %v", err)
		}
		if !bytes.Equal(echo, payload) {
			t.Errorf("echo after the client's half-close: got %d bytes, want %d", len(echo), len(payload))
		}
	})

	t.Run("upstream", func(t *testing.T) {
		certs := dbtest.NewCerts(t, t.TempDir())
		cert, err := tls.LoadX509KeyPair(certs.ServerCert, certs.ServerKey)
		if err != nil {
			t.Fatal(err)
		}
		received := make(chan []byte, 1)
		up := startScripted(t, func(c net.Conn) {
			tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
			r := bufio.NewReader(tc)
			if _, err := r.ReadString('\n'); err != nil {
				return
			}
			io.WriteString(tc, "OK\nBYE\n")
			tc.CloseWrite()
			rest, _ := io.ReadAll(r)
			received <- rest
		})
		c := startCore(t, []Route{{Name: faultRoute, Protocol: "line", UpstreamHost: "127.0.0.1",
			UpstreamPort: up.port(), TLS: TLS{CAFile: certs.CAFile}}}, coreOptions{})
		conn, err := net.Dial("tcp", c.srv.Addr(faultRoute).String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(conn, "LOGIN\n")
		got, err := io.ReadAll(conn)
		if err != nil {
			t.Fatalf("read until the upstream's half-close: %v", err)
		}
		if string(got) != "WELCOME\nBYE\n" {
			t.Fatalf("got %q, want WELCOME and BYE, then the end of stream", got)
		}
		// The upstream still reads: what the client sends now must reach it.
		payload := bytes.Repeat([]byte("after the upstream's half-close\n"), 4096)
		if _, err := conn.Write(payload); err != nil {
			t.Fatalf("write after the upstream's half-close: %v", err)
		}
		conn.(*net.TCPConn).CloseWrite()
		select {
		case rest := <-received:
			if !bytes.Equal(rest, payload) {
				t.Errorf("upstream received %d bytes after its half-close, want %d", len(rest), len(payload))
			}
		case <-time.After(10 * time.Second):
			t.Fatal("upstream did not see the end of the client's stream")
		}
		c.waitIdle(t, 5*time.Second)
	})
}

// listeningAddrs returns the local addresses of this process's listening TCP sockets, read
// from /proc/self/net/tcp and tcp6 and matched to the process's descriptors by inode.
func listeningAddrs(t *testing.T) []netip.Addr {
	t.Helper()
	inodes := make(map[string]bool)
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot list descriptors: %v", err)
	}
	for _, e := range entries {
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err == nil && strings.HasPrefix(target, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(target, "socket:["), "]")] = true
		}
	}
	var addrs []netip.Addr
	for _, table := range []string{"/proc/self/net/tcp", "/proc/self/net/tcp6"} {
		data, err := os.ReadFile(table)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n")[1:] {
			fields := strings.Fields(line)
			// Fields: sl, local_address, rem_address, st, ..., inode (the tenth).
			if len(fields) < 10 || fields[3] != "0A" || !inodes[fields[9]] { // 0A is TCP_LISTEN
				continue
			}
			hexIP, _, _ := strings.Cut(fields[1], ":")
			raw, err := hex.DecodeString(hexIP)
			if err != nil {
				t.Fatalf("%s: bad address %q", table, fields[1])
			}
			// The kernel prints each 32-bit word in host byte order (little-endian here).
			for i := 0; i+4 <= len(raw); i += 4 {
				raw[i], raw[i+1], raw[i+2], raw[i+3] = raw[i+3], raw[i+2], raw[i+1], raw[i]
			}
			addr, _ := netip.AddrFromSlice(raw)
			addrs = append(addrs, addr.Unmap())
		}
	}
	return addrs
}

// TestFaultListenersStayOnLoopback checks every listening socket of the process, after
// Serve and after each reload, and that a reload to a wildcard or outside address is
// rejected without binding it.
func TestFaultListenersStayOnLoopback(t *testing.T) {
	checkLoopback := func(when string) {
		t.Helper()
		addrs := listeningAddrs(t)
		if len(addrs) == 0 {
			t.Fatalf("%s: found no listening sockets", when)
		}
		for _, a := range addrs {
			if !a.IsLoopback() {
				t.Errorf("%s: a listening socket is bound to %s", when, a)
			}
		}
	}
	h := startHarness(t, harnessOptions{})
	checkLoopback("after Serve")
	base := h.srv.cfg.Routes[0]

	var routes []Route
	for i, addr := range []string{"", "127.0.0.2", "localhost", "::1", "::ffff:127.0.0.1"} {
		r := base
		r.Name = fmt.Sprintf("r%d", i)
		r.ListenAddress = addr
		r.LocalPort = dbtest.FreePort(t)
		routes = append(routes, r)
	}
	if err := h.srv.Update(append([]Route{base}, routes...)); err != nil {
		t.Fatalf("Update with loopback addresses: %v", err)
	}
	checkLoopback("after adding routes")

	for _, addr := range []string{"0.0.0.0", "::", "::ffff:0.0.0.0", "::ffff:10.1.2.3", "192.0.2.1", "[::]", "*"} {
		bad := base
		bad.ListenAddress = addr
		if err := h.srv.Update(append([]Route{bad}, routes...)); err == nil {
			t.Errorf("Update with listen address %q succeeded", addr)
		}
		checkLoopback("after Update to " + addr)
		if h.srv.Addr(base.Name) == nil {
			t.Errorf("a rejected Update to %q stopped the route", addr)
		}
	}
}

// TestFaultRejectedPeerCausesNothing checks, for each protocol, that a peer whose UID is not
// allowed is closed with no credential fetch, no dial and no upstream connection, including
// MySQL, where the server speaks first.
func TestFaultRejectedPeerCausesNothing(t *testing.T) {
	for _, p := range faultProtocols {
		t.Run(p.name, func(t *testing.T) {
			certs := dbtest.NewCerts(t, t.TempDir())
			up := startScripted(t, nil)
			route := faultRouteFor(p, up.port(), certs)
			route.AllowedUIDs = []uint32{1000}
			c := startCore(t, []Route{route}, coreOptions{peer: fixedPeer{cred: peercred.Cred{UID: 1001, PID: 9}}})

			res := openRaw(t, c.srv.Addr(faultRoute).String(), p, 5*time.Second)
			// Closing a socket with unread input sends a reset, so ECONNRESET is a close too.
			if res.err != nil && !errors.Is(res.err, syscall.ECONNRESET) {
				t.Fatalf("client read: %v; want the connection closed", res.err)
			}
			if len(res.reply) != 0 {
				t.Errorf("rejected peer got %q, want nothing", res.reply)
			}
			c.waitIdle(t, 5*time.Second)
			if n := c.source.fetches.Load(); n != 0 {
				t.Errorf("credential fetches = %d, want 0", n)
			}
			if n := c.dials.Load(); n != 0 {
				t.Errorf("upstream dials = %d, want 0", n)
			}
			if n := up.conns.Load(); n != 0 {
				t.Errorf("upstream connections = %d, want 0", n)
			}
		})
	}
}

// TestFaultUnixSocketRoute checks the mode of a route's Unix socket, even under umask 0,
// and that the UID allowlist applies to peers on it, identified by the kernel.
func TestFaultUnixSocketRoute(t *testing.T) {
	old := syscall.Umask(0)
	t.Cleanup(func() { syscall.Umask(old) })
	uid := uint32(os.Getuid())
	tests := []struct {
		name    string
		mode    os.FileMode
		allowed []uint32
		want    os.FileMode
		admit   bool
	}{
		{"default mode, own uid allowed", 0, []uint32{uid}, 0o600, true},
		{"0660, own uid allowed", 0o660, []uint32{uid}, 0o660, true},
		{"0660, own uid not allowed", 0o660, []uint32{uid + 1}, 0o660, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			certs := dbtest.NewCerts(t, t.TempDir())
			up := startLineUpstream(t, certs, canaryPassword)
			socket := filepath.Join(t.TempDir(), "line.sock")
			c := startCore(t, []Route{{Name: faultRoute, Protocol: "line", UpstreamHost: "127.0.0.1",
				UpstreamPort: up.port(), TLS: TLS{CAFile: certs.CAFile}, UnixSocket: socket,
				UnixSocketMode: tt.mode, AllowedUIDs: tt.allowed}}, coreOptions{peer: &peercred.Kernel{}})

			st, err := os.Stat(socket)
			if err != nil {
				t.Fatal(err)
			}
			if got := st.Mode().Perm(); got != tt.want {
				t.Errorf("socket mode = %#o, want %#o", got, tt.want)
			}
			conn, err := net.Dial("unix", socket)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(conn, "LOGIN\n")
			got, _ := bufio.NewReader(conn).ReadString('\n')
			if tt.admit && got != "WELCOME\n" {
				t.Errorf("allowed peer got %q, want WELCOME", got)
			}
			if !tt.admit {
				if got != "" {
					t.Errorf("rejected peer got %q, want nothing", got)
				}
				c.waitIdle(t, 5*time.Second)
				if n := c.source.fetches.Load(); n != 0 {
					t.Errorf("credential fetches = %d, want 0", n)
				}
				if n := up.conns.Load(); n != 0 {
					t.Errorf("upstream connections = %d, want 0", n)
				}
				if logs := c.logs.String(); !strings.Contains(logs, fmt.Sprintf("peer_uid=%d", uid)) {
					t.Errorf("log does not name the rejected UID %d:\n%s", uid, logs)
				}
			}
		})
	}
}

// staleCanary is the password of the route that the upstream rejects.
const staleCanary = "stale-3e8a91-pw"

// TestFaultAgentHidesPassword runs the agent binary with a file credential source and
// checks that the stored password appears neither in its command line nor in its debug
// log, through a successful session and a rejected one.
func TestFaultAgentHidesPassword(t *testing.T) {
	dir := t.TempDir()
	agent := filepath.Join(dir, "agent")
	build := exec.Command("go", "build", "-o", agent, "../cmd/agent")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build cmd/agent: %v\n%s", err, out)
	}
	certs := dbtest.NewCerts(t, filepath.Join(dir, "certs"))
	cert, err := tls.LoadX509KeyPair(certs.ServerCert, certs.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	// A Redis fake: +OK to an AUTH that carries the canary, WRONGPASS otherwise, then
	// +PONG to every read.
	up := startScripted(t, func(c net.Conn) {
		tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
		buf := make([]byte, 4096)
		n, err := tc.Read(buf)
		if err != nil {
			return
		}
		if !bytes.Contains(buf[:n], []byte(canaryPassword)) {
			io.WriteString(tc, "-WRONGPASS invalid username-password pair\r\n")
			return
		}
		io.WriteString(tc, "+OK\r\n")
		for {
			if _, err := tc.Read(buf); err != nil {
				return
			}
			io.WriteString(tc, "+PONG\r\n")
		}
	})
	goodPort, badPort := dbtest.FreePort(t), dbtest.FreePort(t)
	secrets := fmt.Sprintf("secrets:\n  good: {username: app, password: %q}\n  bad: {username: app, password: %q}\n",
		canaryPassword, staleCanary)
	if err := os.WriteFile(filepath.Join(dir, "secrets.yaml"), []byte(secrets), 0o600); err != nil {
		t.Fatal(err)
	}
	config := fmt.Sprintf(`credentials: {source: file, path: secrets.yaml}
shutdown_timeout: 2s
routes:
  - {name: good, protocol: redis, local_port: %d, upstream_host: 127.0.0.1, upstream_port: %d,
     committed_secret_id: good, tls: {ca_file: %s}}
  - {name: bad, protocol: redis, local_port: %d, upstream_host: 127.0.0.1, upstream_port: %d,
     committed_secret_id: bad, tls: {ca_file: %s}}
`, goodPort, up.port(), certs.CAFile, badPort, up.port(), certs.CAFile)
	configFile := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(configFile, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}

	var logs dbtest.LogBuffer
	cmd := exec.Command(agent, "-config", configFile, "-log-level", "debug")
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()
	waitUntil(t, 10*time.Second, func() bool {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", badPort))
		if err == nil {
			c.Close()
		}
		return err == nil
	}, func() string { return "agent did not listen; output:\n" + logs.String() })

	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, pw := range []string{canaryPassword, staleCanary} {
		if bytes.Contains(cmdline, []byte(pw)) {
			t.Errorf("agent command line contains a password: %q", cmdline)
		}
	}

	for _, tc := range []struct {
		port int
		want string
	}{
		{goodPort, "+PONG\r\n"},
		{badPort, "-WRONGPASS"},
	} {
		conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", tc.port))
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(conn, "PING\r\n")
		reply, _ := bufio.NewReader(conn).ReadString('\n')
		conn.Close()
		if !strings.HasPrefix(reply, tc.want) {
			t.Errorf("port %d: got %q, want %q", tc.port, reply, tc.want)
		}
		if strings.Contains(reply, canaryPassword) || strings.Contains(reply, staleCanary) {
			t.Errorf("port %d: reply contains a password: %q", tc.port, reply)
		}
	}

	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()
	stopped = true
	out := logs.String()
	for _, pw := range []string{canaryPassword, staleCanary} {
		if strings.Contains(out, pw) {
			t.Errorf("agent output contains a password:\n%s", out)
		}
	}
	for _, want := range []string{"outcome=ok", "outcome=" + outcomeAuthFailed} {
		if !strings.Contains(out, want) {
			t.Errorf("agent output lacks %q, so a path went untested:\n%s", want, out)
		}
	}
}
