package mongoauth

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/xdg-go/scram"
	"go.mongodb.org/mongo-driver/bson/bsontype"
	"go.mongodb.org/mongo-driver/x/bsonx/bsoncore"
	"go.mongodb.org/mongo-driver/x/mongo/driver/wiremessage"

	"github.com/knoxcall/dbproxy/credsource"
	"github.com/knoxcall/dbproxy/internal/dbtest"
)

// fakeServer is a scripted MongoDB-wire server on 127.0.0.1 with TLS. Each accepted
// connection runs script.
type fakeServer struct {
	addr  string
	certs *dbtest.Certs

	mu       sync.Mutex
	received []*command // every command read by the script, in order
}

type fakeConn struct {
	net.Conn
	server *fakeServer
}

func startFakeServer(t *testing.T, script func(t *testing.T, c *fakeConn)) *fakeServer {
	t.Helper()
	certs := dbtest.NewCerts(t, filepath.Join(t.TempDir(), "certs"))
	cert, err := tls.LoadX509KeyPair(certs.ServerCert, certs.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	s := &fakeServer{addr: ln.Addr().String(), certs: certs}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer conn.Close()
				conn.SetDeadline(time.Now().Add(10 * time.Second))
				script(t, &fakeConn{Conn: conn, server: s})
			})
		}
	})
	return s
}

func (s *fakeServer) commands() []*command {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*command(nil), s.received...)
}

// read returns the next command, or nil when the connection ended.
func (c *fakeConn) read(t *testing.T) *command {
	msg, err := readMessage(c)
	if err != nil {
		return nil
	}
	cmd, err := parseCommand(msg)
	if err != nil {
		t.Errorf("fake server: %v", err)
		return nil
	}
	c.server.mu.Lock()
	c.server.received = append(c.server.received, cmd)
	c.server.mu.Unlock()
	return cmd
}

func (c *fakeConn) reply(cmd *command, doc bsoncore.Document) {
	c.Write(buildMsg(upstreamRequestID.Add(1), cmd.requestID, doc, nil))
}

// scramServer runs the server side of SCRAM for user with password.
type scramServer struct {
	conv *scram.ServerConversation
}

func newSCRAMServer(t *testing.T, mechanism, user, password string) *scramServer {
	t.Helper()
	client, err := newSCRAMClient(mechanism, user, password)
	if err != nil {
		t.Fatal(err)
	}
	stored := client.GetStoredCredentials(scram.KeyFactors{Salt: "fake-salt", Iters: 4096})
	lookup := func(string) (scram.StoredCredentials, error) { return stored, nil }
	hash := scram.SHA256
	if mechanism == mechanismSHA1 {
		hash = scram.SHA1
	}
	server, err := hash.NewServer(lookup)
	if err != nil {
		t.Fatal(err)
	}
	return &scramServer{conv: server.NewConversation()}
}

// step feeds the client payload of a saslStart or saslContinue command (or of a
// speculativeAuthenticate document) and returns the SASL reply, or a code 18 error.
func (s *scramServer) step(t *testing.T, sasl bsoncore.Document) bsoncore.Document {
	_, payload, ok := sasl.Lookup("payload").BinaryOK()
	if !ok {
		t.Errorf("fake server: SASL command without binary payload: %v", sasl)
	}
	out, err := s.conv.Step(string(payload))
	if err != nil {
		return errorDocument(codeAuthenticationFailed, "AuthenticationFailed", "Authentication failed.")
	}
	return bsoncore.NewDocumentBuilder().
		AppendInt32("conversationId", 1).
		AppendBoolean("done", s.conv.Done()).
		AppendBinary("payload", 0, []byte(out)).
		AppendDouble("ok", 1).
		Build()
}

func helloReply(extra ...func(*bsoncore.DocumentBuilder)) *bsoncore.DocumentBuilder {
	b := bsoncore.NewDocumentBuilder().
		AppendBoolean("ismaster", true).
		AppendInt32("maxWireVersion", 21).
		AppendInt32("maxBsonObjectSize", maxBSONObjectSize).
		AppendInt32("maxMessageSizeBytes", maxMessageSizeBytes)
	for _, f := range extra {
		f(b)
	}
	return b
}

// scriptSCRAM returns a script that ignores speculative authentication, lists mechanisms in
// saslSupportedMechs, and runs a saslStart/saslContinue exchange with the first mechanism.
func scriptSCRAM(mechanisms []string, password string, extra ...func(*bsoncore.DocumentBuilder)) func(*testing.T, *fakeConn) {
	return func(t *testing.T, c *fakeConn) {
		hello := c.read(t)
		if hello == nil {
			return
		}
		values := make([]bsoncore.Value, len(mechanisms))
		for i, m := range mechanisms {
			values[i] = bsoncore.Value{Type: bsontype.String, Data: bsoncore.AppendString(nil, m)}
		}
		b := helloReply(extra...).AppendArray("saslSupportedMechs", bsoncore.BuildArray(nil, values...)).AppendDouble("ok", 1)
		c.reply(hello, b.Build())

		server := newSCRAMServer(t, mechanisms[0], "app", password)
		for {
			cmd := c.read(t)
			if cmd == nil {
				return
			}
			c.reply(cmd, server.step(t, cmd.body))
			if server.conv.Done() {
				return
			}
		}
	}
}

// scriptSpeculative returns a script that accepts speculative SCRAM-SHA-256 authentication.
func scriptSpeculative(password string) func(*testing.T, *fakeConn) {
	return func(t *testing.T, c *fakeConn) {
		hello := c.read(t)
		if hello == nil {
			return
		}
		spec, _ := hello.body.Lookup("speculativeAuthenticate").DocumentOK()
		server := newSCRAMServer(t, mechanismSHA256, "app", password)
		first := server.step(t, spec)
		if _, failed := first.Lookup("code").AsInt32OK(); failed {
			c.reply(hello, helloReply().AppendDouble("ok", 1).Build())
		} else {
			c.reply(hello, helloReply().AppendDocument("speculativeAuthenticate", first).AppendDouble("ok", 1).Build())
		}
		for {
			cmd := c.read(t)
			if cmd == nil {
				return
			}
			c.reply(cmd, server.step(t, cmd.body))
			if server.conv.Done() {
				return
			}
		}
	}
}

func queryHello(requestID int32, body bsoncore.Document) []byte {
	idx, msg := wiremessage.AppendHeaderStart(nil, requestID, 0, wiremessage.OpQuery)
	msg = wiremessage.AppendQueryFlags(msg, 0)
	msg = wiremessage.AppendQueryFullCollectionName(msg, "admin.$cmd")
	msg = wiremessage.AppendQueryNumberToSkip(msg, 0)
	msg = wiremessage.AppendQueryNumberToReturn(msg, -1)
	msg = append(msg, body...)
	return bsoncore.UpdateLength(msg, idx, int32(len(msg)))
}

func clientMetadata() bsoncore.Document {
	return bsoncore.NewDocumentBuilder().
		AppendDocument("application", bsoncore.NewDocumentBuilder().AppendString("name", "fake-test").Build()).
		Build()
}

func legacyHello() bsoncore.Document {
	return bsoncore.NewDocumentBuilder().
		AppendInt32("isMaster", 1).
		AppendBoolean("helloOk", true).
		AppendDocument("client", clientMetadata()).
		AppendArray("compression", bsoncore.BuildArray(nil, stringValue("zstd"), stringValue("zlib"))).
		Build()
}

func stringValue(s string) bsoncore.Value {
	return bsoncore.Value{Type: bsontype.String, Data: bsoncore.AppendString(nil, s)}
}

// handshakeResult is what runFakeHandshake observed.
type handshakeResult struct {
	err     error
	reply   bsoncore.Document // body of the reply to the client's hello
	opcode  wiremessage.OpCode
	replyTo int32
	log     string
	elapsed time.Duration // time spent in Handshake
}

// runFakeHandshake connects a raw client through Handshake to the server at addr and sends
// request, a complete message with request ID 77.
func runFakeHandshake(t *testing.T, server *fakeServer, creds credsource.Credentials, request []byte, timeout time.Duration,
	redial func(context.Context) (net.Conn, credsource.Credentials, error)) handshakeResult {
	t.Helper()
	clientSide, agentSide := dbtest.TCPPair(t)
	upstream, err := net.Dial("tcp", server.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { upstream.Close() })

	var logs dbtest.LogBuffer
	opts := Options{
		Route:     "fake-route",
		TLSConfig: server.certs.ClientTLS("127.0.0.1"),
		Logger:    slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Redial:    redial,
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if _, err := clientSide.Write(request); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	conns, err := Handshake(ctx, agentSide, upstream, creds, opts)
	result := handshakeResult{err: err, elapsed: time.Since(start)}
	if err == nil {
		t.Cleanup(func() { conns.Upstream.Close() })
	}

	clientSide.SetReadDeadline(time.Now().Add(5 * time.Second))
	if msg, readErr := readMessage(clientSide); readErr == nil {
		_, _, result.replyTo, result.opcode, _, _ = wiremessage.ReadHeader(msg)
		result.reply, readErr = parseReply(msg, result.replyTo)
		if readErr != nil {
			t.Errorf("reply to the client: %v", readErr)
		}
	}
	result.log = logs.String()
	return result
}

var appCreds = credsource.Credentials{Username: "app", Password: "secret", AuthSource: "appdb"}

func TestHandshakeSCRAMSHA1Only(t *testing.T) {
	compression := func(b *bsoncore.DocumentBuilder) {
		b.AppendArray("compression", bsoncore.BuildArray(nil, stringValue("zstd")))
	}
	server := startFakeServer(t, scriptSCRAM([]string{mechanismSHA1}, "secret", compression))
	got := runFakeHandshake(t, server, appCreds, queryHello(77, legacyHello()), 5*time.Second, nil)
	if got.err != nil {
		t.Fatalf("Handshake: %v", got.err)
	}
	if got.opcode != wiremessage.OpReply {
		t.Errorf("reply opcode = %v, want OP_REPLY", got.opcode)
	}
	if got.replyTo != 77 {
		t.Errorf("reply responseTo = %d, want 77", got.replyTo)
	}
	if v := got.reply.Lookup("saslSupportedMechs"); v.Type != 0 {
		t.Errorf("client reply contains saslSupportedMechs: %v", v)
	}
	if ok, _ := got.reply.Lookup("ismaster").BooleanOK(); !ok {
		t.Errorf("client reply lacks ismaster: true: %v", got.reply)
	}
	if chosen, _ := got.reply.Lookup("compression").ArrayOK(); chosen.String() != `["zstd"]` {
		t.Errorf("client reply compression = %v, want [\"zstd\"]", chosen)
	}

	cmds := server.commands()
	var names []string
	for _, c := range cmds {
		names = append(names, c.name)
	}
	if diff := cmp.Diff([]string{"isMaster", "saslStart", "saslContinue"}, names); diff != "" {
		t.Errorf("commands received by the server (-want +got):\n%s", diff)
	}
	hello := cmds[0]
	if hello.opcode != wiremessage.OpMsg {
		t.Errorf("upstream hello opcode = %v, want OP_MSG", hello.opcode)
	}
	if app, _ := hello.body.Lookup("client", "application", "name").StringValueOK(); app != "fake-test" {
		t.Errorf("upstream hello client.application.name = %q, want fake-test", app)
	}
	if offered, _ := hello.body.Lookup("compression").ArrayOK(); offered.String() != `["zstd","zlib"]` {
		t.Errorf("upstream hello compression = %v, want the client's [\"zstd\",\"zlib\"]", offered)
	}
	if mechs, _ := hello.body.Lookup("saslSupportedMechs").StringValueOK(); mechs != "appdb.app" {
		t.Errorf("upstream hello saslSupportedMechs = %q, want appdb.app", mechs)
	}
	if mech, _ := cmds[1].body.Lookup("mechanism").StringValueOK(); mech != mechanismSHA1 {
		t.Errorf("saslStart mechanism = %q, want %s", mech, mechanismSHA1)
	}
	if db, _ := cmds[1].body.Lookup("$db").StringValueOK(); db != "appdb" {
		t.Errorf("saslStart $db = %q, want appdb", db)
	}
}

func TestHandshakeSpeculativeOverOPMSG(t *testing.T) {
	server := startFakeServer(t, scriptSpeculative("secret"))
	body := bsoncore.NewDocumentBuilder().
		AppendInt32("hello", 1).
		AppendDocument("client", clientMetadata()).
		AppendString("$db", "admin").
		Build()
	got := runFakeHandshake(t, server, appCreds, buildMsg(77, 0, body, nil), 5*time.Second, nil)
	if got.err != nil {
		t.Fatalf("Handshake: %v", got.err)
	}
	if got.opcode != wiremessage.OpMsg {
		t.Errorf("reply opcode = %v, want OP_MSG", got.opcode)
	}
	if got.replyTo != 77 {
		t.Errorf("reply responseTo = %d, want 77", got.replyTo)
	}
	if v := got.reply.Lookup("speculativeAuthenticate"); v.Type != 0 {
		t.Errorf("client reply contains speculativeAuthenticate: %v", v)
	}
	var names []string
	for _, c := range server.commands() {
		names = append(names, c.name)
	}
	if diff := cmp.Diff([]string{"hello", "saslContinue"}, names); diff != "" {
		t.Errorf("commands received by the server (-want +got):\n%s", diff)
	}
}

func TestHandshakeWrongPasswordNoRedial(t *testing.T) {
	server := startFakeServer(t, scriptSpeculative("other"))
	got := runFakeHandshake(t, server, appCreds, queryHello(77, legacyHello()), 5*time.Second, nil)
	if !errors.Is(got.err, ErrAuthFailed) {
		t.Fatalf("Handshake error = %v, want ErrAuthFailed", got.err)
	}
	if code, _ := got.reply.Lookup("code").AsInt32OK(); code != codeAuthenticationFailed {
		t.Errorf("client reply code = %d, want 18: %v", code, got.reply)
	}
	if msg, _ := got.reply.Lookup("errmsg").StringValueOK(); !strings.Contains(msg, `"fake-route"`) {
		t.Errorf("client errmsg %q does not name the route", msg)
	}
	if got.opcode != wiremessage.OpReply {
		t.Errorf("reply opcode = %v, want OP_REPLY", got.opcode)
	}
}

func TestHandshakeRedial(t *testing.T) {
	rejecting := startFakeServer(t, scriptSpeculative("rotated"))
	tests := []struct {
		name      string
		redialErr error
		wantErr   error
		wantCode  int32
	}{
		{name: "new credentials accepted"},
		{name: "credentials unchanged", redialErr: ErrCredentialsUnchanged, wantErr: ErrAuthFailed,
			wantCode: codeAuthenticationFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls := 0
			redial := func(ctx context.Context) (net.Conn, credsource.Credentials, error) {
				calls++
				if tt.redialErr != nil {
					return nil, credsource.Credentials{}, tt.redialErr
				}
				conn, err := net.Dial("tcp", rejecting.addr)
				return conn, credsource.Credentials{Username: "app", Password: "rotated", AuthSource: "appdb"}, err
			}
			got := runFakeHandshake(t, rejecting, appCreds, queryHello(77, legacyHello()), 5*time.Second, redial)
			if calls != 1 {
				t.Errorf("Redial calls = %d, want 1", calls)
			}
			if !errors.Is(got.err, tt.wantErr) || (tt.wantErr == nil && got.err != nil) {
				t.Errorf("Handshake error = %v, want %v", got.err, tt.wantErr)
			}
			code, _ := got.reply.Lookup("code").AsInt32OK()
			if code != tt.wantCode {
				t.Errorf("client reply code = %d, want %d: %v", code, tt.wantCode, got.reply)
			}
		})
	}
}

func TestHandshakeReplicaSetWarning(t *testing.T) {
	hosts := func(b *bsoncore.DocumentBuilder) {
		b.AppendString("setName", "rs0")
		b.AppendArray("hosts", bsoncore.BuildArray(nil,
			bsoncore.Value{Type: bsontype.String, Data: bsoncore.AppendString(nil, "db1.internal:27017")}))
	}
	server := startFakeServer(t, scriptSCRAM([]string{mechanismSHA256, mechanismSHA1}, "secret", hosts))
	got := runFakeHandshake(t, server, appCreds, queryHello(77, legacyHello()), 5*time.Second, nil)
	if got.err != nil {
		t.Fatalf("Handshake: %v", got.err)
	}
	if !strings.Contains(got.log, "level=WARN") || !strings.Contains(got.log, "directConnection=true") {
		t.Errorf("log has no warning about directConnection=true:\n%s", got.log)
	}
	if !strings.Contains(got.log, "db1.internal:27017") {
		t.Errorf("warning does not list the hosts:\n%s", got.log)
	}
	if set, _ := got.reply.Lookup("setName").StringValueOK(); set != "rs0" {
		t.Errorf("client reply setName = %q, want rs0 (the reply is passed on unchanged)", set)
	}
	if mech, _ := server.commands()[1].body.Lookup("mechanism").StringValueOK(); mech != mechanismSHA256 {
		t.Errorf("saslStart mechanism = %q, want %s", mech, mechanismSHA256)
	}
}

func TestHandshakeStalledReply(t *testing.T) {
	release := make(chan struct{})
	server := startFakeServer(t, func(t *testing.T, c *fakeConn) {
		c.read(t)
		<-release // never reply
	})
	defer close(release)
	got := runFakeHandshake(t, server, appCreds, queryHello(77, legacyHello()), 300*time.Millisecond, nil)
	if !errors.Is(got.err, context.DeadlineExceeded) {
		t.Errorf("Handshake error = %v, want context.DeadlineExceeded", got.err)
	}
	if got.elapsed > 2*time.Second {
		t.Errorf("Handshake returned after %v, want about 300ms", got.elapsed)
	}
	if code, _ := got.reply.Lookup("code").AsInt32OK(); code != codeHostUnreachable {
		t.Errorf("client reply code = %d, want 6: %v", code, got.reply)
	}
	msg, _ := got.reply.Lookup("errmsg").StringValueOK()
	if want := `route "fake-route": login timed out in step "`; !strings.HasPrefix(msg, want) {
		t.Errorf("client errmsg = %q, want prefix %q", msg, want)
	}
	if strings.Contains(msg, "127.0.0.1") {
		t.Errorf("client errmsg = %q contains a socket address", msg)
	}
}

func TestHandshakeBadServerSignature(t *testing.T) {
	server := startFakeServer(t, func(t *testing.T, c *fakeConn) {
		hello := c.read(t)
		if hello == nil {
			return
		}
		spec, _ := hello.body.Lookup("speculativeAuthenticate").DocumentOK()
		scramSrv := newSCRAMServer(t, mechanismSHA256, "app", "secret")
		c.reply(hello, helloReply().AppendDocument("speculativeAuthenticate", scramSrv.step(t, spec)).AppendDouble("ok", 1).Build())
		cont := c.read(t)
		if cont == nil {
			return
		}
		// A server that does not know the stored key cannot compute the signature.
		forged := bsoncore.NewDocumentBuilder().AppendInt32("conversationId", 1).AppendBoolean("done", true).
			AppendBinary("payload", 0, []byte("v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")).AppendDouble("ok", 1).Build()
		c.reply(cont, forged)
	})
	got := runFakeHandshake(t, server, appCreds, queryHello(77, legacyHello()), 5*time.Second, nil)
	if !errors.Is(got.err, ErrUpstreamProtocol) {
		t.Errorf("Handshake error = %v, want ErrUpstreamProtocol", got.err)
	}
	if code, _ := got.reply.Lookup("code").AsInt32OK(); code != codeHostUnreachable {
		t.Errorf("client reply code = %d, want 6: %v", code, got.reply)
	}
}

func TestHandshakeClientCredentials(t *testing.T) {
	tests := []struct {
		name string
		body bsoncore.Document
	}{
		{"speculativeAuthenticate in hello", bsoncore.NewDocumentBuilder().AppendInt32("isMaster", 1).
			AppendDocument("speculativeAuthenticate", saslStartCommand(mechanismSHA256, "n,,n=app,r=abc", "db", "admin")).Build()},
		{"saslStart first", saslStartCommand(mechanismSHA256, "n,,n=app,r=abc", "db", "admin")},
		{"authenticate first", bsoncore.NewDocumentBuilder().AppendInt32("authenticate", 1).Build()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			server := startFakeServer(t, func(t *testing.T, c *fakeConn) { c.read(t) })
			got := runFakeHandshake(t, server, appCreds, queryHello(77, tt.body), 5*time.Second, nil)
			if !errors.Is(got.err, ErrClientProtocol) {
				t.Errorf("Handshake error = %v, want ErrClientProtocol", got.err)
			}
			msg, _ := got.reply.Lookup("errmsg").StringValueOK()
			if !strings.Contains(msg, "credentials are supplied by the agent") {
				t.Errorf("client errmsg = %q, want the credentials message", msg)
			}
			if n := len(server.commands()); n != 0 {
				t.Errorf("server received %d commands, want 0", n)
			}
		})
	}
}

func TestHandshakeFirstCommandNotHello(t *testing.T) {
	server := startFakeServer(t, func(t *testing.T, c *fakeConn) { c.read(t) })
	body := bsoncore.NewDocumentBuilder().AppendInt32("ping", 1).AppendString("$db", "admin").Build()
	got := runFakeHandshake(t, server, appCreds, buildMsg(77, 0, body, nil), 5*time.Second, nil)
	if !errors.Is(got.err, ErrClientProtocol) {
		t.Errorf("Handshake error = %v, want ErrClientProtocol", got.err)
	}
	if msg, _ := got.reply.Lookup("errmsg").StringValueOK(); !strings.Contains(msg, `got "ping"`) {
		t.Errorf("client errmsg = %q, want it to name ping", msg)
	}
	if got.opcode != wiremessage.OpMsg || got.replyTo != 77 {
		t.Errorf("reply opcode %v responseTo %d, want OP_MSG responseTo 77", got.opcode, got.replyTo)
	}
}

func TestGuardAnswersSASLAfterHello(t *testing.T) {
	clientSide, agentSide := dbtest.TCPPair(t)
	guard := newClientGuard(agentSide, "guard-route")
	ping := buildMsg(3, 0, bsoncore.NewDocumentBuilder().AppendInt32("ping", 1).AppendString("$db", "admin").Build(), nil)
	saslStart := buildMsg(2, 0, saslStartCommand(mechanismSHA256, "n,,n=app,r=abc", "$db", "admin"), nil)
	clientSide.Write(append(saslStart, ping...))

	// The guard replies to saslStart itself and then passes ping on.
	got := make([]byte, len(ping))
	guard.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(guard, got); err != nil {
		t.Fatalf("read through guard: %v", err)
	}
	if !bytes.Equal(got, ping) {
		t.Errorf("guard passed %x, want the ping message %x", got, ping)
	}
	clientSide.SetReadDeadline(time.Now().Add(5 * time.Second))
	msg, err := readMessage(clientSide)
	if err != nil {
		t.Fatalf("read error reply: %v", err)
	}
	reply, err := parseReply(msg, 2)
	if err != nil {
		t.Fatal(err)
	}
	if msg, _ := reply.Lookup("errmsg").StringValueOK(); !strings.Contains(msg, "credentials are supplied by the agent") {
		t.Errorf("errmsg = %q, want the credentials message", msg)
	}
}

func TestRejectReplies(t *testing.T) {
	tests := []struct {
		name     string
		request  []byte
		cause    error
		wantCode int32
		wantOp   wiremessage.OpCode
	}{
		{"unreachable over OP_QUERY", queryHello(9, legacyHello()), errors.New("dial upstream: connection refused"),
			codeHostUnreachable, wiremessage.OpReply},
		{"missing secret over OP_MSG", buildMsg(9, 0, bsoncore.NewDocumentBuilder().AppendInt32("hello", 1).
			AppendString("$db", "admin").Build(), nil), credsource.ErrNotFound, codeAuthenticationFailed, wiremessage.OpMsg},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clientSide, agentSide := dbtest.TCPPair(t)
			clientSide.Write(tt.request)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := Reject(ctx, agentSide, "reject-route", tt.cause); err != nil {
				t.Fatalf("Reject: %v", err)
			}
			clientSide.SetReadDeadline(time.Now().Add(5 * time.Second))
			msg, err := readMessage(clientSide)
			if err != nil {
				t.Fatal(err)
			}
			_, _, responseTo, opcode, _, _ := wiremessage.ReadHeader(msg)
			if opcode != tt.wantOp || responseTo != 9 {
				t.Errorf("reply opcode %v responseTo %d, want %v responseTo 9", opcode, responseTo, tt.wantOp)
			}
			reply, err := parseReply(msg, 9)
			if err != nil {
				t.Fatal(err)
			}
			if code, _ := reply.Lookup("code").AsInt32OK(); code != tt.wantCode {
				t.Errorf("code = %d, want %d", code, tt.wantCode)
			}
			if msg, _ := reply.Lookup("errmsg").StringValueOK(); !strings.Contains(msg, `"reject-route"`) {
				t.Errorf("errmsg %q does not name the route", msg)
			}
		})
	}
}
