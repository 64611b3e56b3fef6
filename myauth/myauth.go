package myauth

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"

	"github.com/knoxcall/dbproxy/credsource"
	"github.com/knoxcall/dbproxy/internal/handshake"
)

// Options configure one Handshake. The type is shared by the protocol packages, so go doc
// does not list its fields here:
//
//	Route     string        // route name shown in errors sent to the client and in log lines
//	TLSConfig *tls.Config   // upstream TLS configuration; required: the upstream is never plaintext
//	Logger    *slog.Logger  // protocol steps at Debug level; nil means no logging
//	Redial    func(ctx context.Context) (net.Conn, credsource.Credentials, error)
//
// Redial, if not nil, is called once after the upstream rejected the credentials. It returns
// a new dialed (not yet TLS) upstream connection and freshly fetched credentials, or an
// error wrapping ErrCredentialsUnchanged, and Handshake then reports the first rejection.
type Options = handshake.Options

// Conns are the connections that a finished Handshake hands to the splice: Client and
// Upstream, both net.Conn. Each returns the bytes read ahead during the login first.
type Conns = handshake.Conns

// Errors that Handshake wraps, re-exported from the shared handshake package.
var (
	// ErrAuthFailed: the upstream rejected the stored credentials; the client was sent the
	// server's own error.
	ErrAuthFailed = handshake.ErrAuthFailed
	// ErrUpstreamRejected: the upstream rejected the session for a reason other than the
	// credentials, such as an unknown database or its connection limit. The client was
	// sent the server's own error.
	ErrUpstreamRejected = handshake.ErrUpstreamRejected
	// ErrClientProtocol: the client sent something the protocol does not allow here; it
	// was sent an error.
	ErrClientProtocol = handshake.ErrClientProtocol
	// ErrClientClosed: the client closed or reset its connection before the login
	// finished.
	ErrClientClosed = handshake.ErrClientClosed
	// ErrUpstreamProtocol: the upstream broke the protocol, declined TLS or asked for an
	// unsupported authentication method.
	ErrUpstreamProtocol = handshake.ErrUpstreamProtocol
	// ErrCredentialsUnchanged: what Options.Redial returns (wrapped) when the re-fetched
	// credentials are the rejected ones.
	ErrCredentialsUnchanged = handshake.ErrCredentialsUnchanged
)

// Error codes of the ERR packets that the agent writes itself. They are the server's own
// codes for the same situations, so clients treat them as they would the server's.
const (
	codeHandshakeError  = mysql.ER_HANDSHAKE_ERROR         // 1043, SQLSTATE 08S01
	codeAccessDenied    = mysql.ER_ACCESS_DENIED_ERROR     // 1045, SQLSTATE 28000
	codeOldClient       = mysql.ER_NOT_SUPPORTED_AUTH_MODE // 1251, SQLSTATE 08004
	stateCommunication  = "08S01"
	stateAccessDenied   = "28000"
	stateOldClient      = "08004"
	fastAuthSuccessByte = mysql.CACHE_SHA2_FAST_AUTH
)

// quitTimeout bounds the login and COM_QUIT that end an upstream connection whose client left
// before logging in (see endUpstream).
const quitTimeout = 5 * time.Second

// errorWriteTimeout bounds the write of an ERR packet after the login timeout has passed.
const errorWriteTimeout = time.Second

// Handshake runs the MySQL login phase between a client of the agent and the upstream.
//
// It reads the upstream's greeting and greets the client with the same server version,
// connection id, capabilities (without CLIENT_SSL) and plugin name, but a scramble of its own.
// It reads the client's HandshakeResponse41 without checking its user or auth response. Then
// it logs in upstream over TLS as creds with the capabilities the client chose, and forwards
// the server's OK or ERR with the sequence id the client expects.
//
// Every failure is reported to a client that is still connected as an ERR packet before
// Handshake returns, so the caller must not call Reject afterwards. The error wraps
// ErrAuthFailed (and is a *ServerError) when the upstream rejected the credentials,
// ErrClientProtocol for bad client input, and ErrUpstreamProtocol for an upstream without TLS,
// with an unsupported plugin or with malformed packets.
func Handshake(ctx context.Context, client, upstream net.Conn, creds credsource.Credentials, opts Options) (Conns, error) {
	s := &session{ctx: ctx, client: client, opts: &opts, log: opts.Log()}
	s.stop = watchContext(ctx, client, upstream)
	defer s.stop()
	conns, err := s.run(upstream, creds)
	return conns, handshake.ContextError(ctx, err)
}

// Reject sends the client an ERR packet saying that the agent could not set up the session
// for route, with SQLSTATE 28000 when cause wraps credsource.ErrNotFound and 08S01 otherwise.
// The server speaks first in MySQL, so the ERR takes the greeting's place (sequence id 0)
// and Reject reads nothing.
func Reject(ctx context.Context, client net.Conn, route string, cause error) error {
	stop := handshake.WatchContext(ctx, client)
	defer stop()
	err := writePacket(client, 0, agentErrPacket(context.Background(), route, cause))
	return handshake.ContextError(ctx, err)
}

// agentErrPacket encodes an ERR packet for a failure of the agent itself. When ctx has ended,
// the message states that the login timed out.
func agentErrPacket(ctx context.Context, route string, cause error) []byte {
	code, state := uint16(codeHandshakeError), stateCommunication
	switch {
	case errors.Is(cause, credsource.ErrNotFound):
		code, state = codeAccessDenied, stateAccessDenied
	case errors.Is(cause, handshake.ErrTooManyConnections):
		// The server's own error for its max_connections, so pools back off as they would.
		code = mysql.ER_CON_COUNT_ERROR // 1040, SQLSTATE 08004
		state = "08004"
	}
	msg := fmt.Sprintf("dbproxy route %q: %s", route, handshake.ClientErrorText(ctx, cause))
	return errPacket(code, state, msg, true)
}

type session struct {
	ctx    context.Context
	client net.Conn
	opts   *Options
	log    *slog.Logger
	stop   func() // ends the context watch on both connections
	// resultSeq is the sequence id of the login result sent to the client: 2, or 4 after
	// an AuthSwitchRequest.
	resultSeq byte
}

func (s *session) run(upstream net.Conn, creds credsource.Credentials) (Conns, error) {
	// Handshake v10 from the upstream.
	g, err := s.readGreeting(upstream)
	if err != nil {
		return Conns{}, err
	}

	// Handshake v10 to the client, with a scramble of our own.
	clientCaps := g.capabilities &^ mysql.CLIENT_SSL
	if err := writePacket(s.client, 0, g.marshal(clientCaps, newScramble())); err != nil {
		s.endUpstream(upstream, g, creds)
		return Conns{}, fmt.Errorf("client greeting: %w", err)
	}

	// HandshakeResponse41 from the client.
	resp, err := s.readResponse()
	if err != nil {
		s.endUpstream(upstream, g, creds)
		return Conns{}, err
	}
	s.log.Debug("mysql client response", "route", s.opts.Route, "capabilities", resp.capabilities,
		"database", resp.database, "auth_plugin", resp.authPlugin, "attributes_len", len(resp.attributes))

	// A client plugin that waits for data of its own receives it in an AuthSwitchRequest.
	s.resultSeq = 2
	if plugin := clientSwitchPlugin(resp, g); plugin != "" {
		if err := s.switchClient(resp, plugin); err != nil {
			s.endUpstream(upstream, g, creds)
			return Conns{}, err
		}
	}

	// Login upstream as the stored user, retried once with fresh credentials after 1045.
	up := upstreamResponse(resp, g)
	l, err := loginUpstream(s.ctx, upstream, g, up, creds, s.opts.TLSConfig)
	if err != nil {
		s.sendAgentError(s.resultSeq, err)
		return Conns{}, err
	}
	if l.rejected != nil && l.rejected.Code == codeAccessDenied && s.opts.Redial != nil {
		l, err = s.retry(l, resp, up)
		if err != nil {
			return Conns{}, err
		}
	}
	if l.rejected != nil {
		if err := writePacket(s.client, s.resultSeq, l.errRaw); err != nil {
			l.conn.Close()
			return Conns{}, fmt.Errorf("client login result: %w", err)
		}
		l.conn.Close()
		if l.rejected.Code == codeAccessDenied {
			return Conns{}, fmt.Errorf("upstream login: %w: %w", ErrAuthFailed, l.rejected)
		}
		return Conns{}, fmt.Errorf("upstream login: %w: %w", ErrUpstreamRejected, l.rejected)
	}

	// OK to the client, after the fast-auth marker for a caching_sha2_password client.
	if err := s.sendOK(resp, l.ok); err != nil {
		l.conn.Close()
		return Conns{}, fmt.Errorf("client login result: %w", err)
	}
	s.log.Debug("mysql login ok", "route", s.opts.Route, "server_version", g.serverVersion)
	s.stop()
	handshake.ClearDeadlines(s.client, l.conn)
	return Conns{Client: newClientConn(s.client, resp.capabilities&g.capabilities, s.opts.Route),
		Upstream: l.conn}, nil
}

// readGreeting reads the upstream's greeting. An ERR in its place (1040 too many
// connections, 1129 host blocked) goes to the client unchanged; other failures get an agent
// ERR. The upstream must offer TLS and the 4.1 protocol.
func (s *session) readGreeting(upstream net.Conn) (*greeting, error) {
	_, p, err := readPacket(upstream, maxGreetingLen)
	if err == nil && len(p) > 0 && p[0] == mysql.ERR_HEADER {
		s.sendError(0, p)
		return nil, fmt.Errorf("upstream greeting: %w: %w", ErrUpstreamRejected, parseErrPacket(p))
	}
	if err != nil {
		err = fmt.Errorf("upstream greeting: %w", upstreamReadError(err))
		s.sendAgentError(0, err)
		return nil, err
	}
	g, err := parseUsableGreeting(p)
	if err != nil {
		err = fmt.Errorf("upstream greeting: %w: %w", ErrUpstreamProtocol, err)
		s.sendAgentError(0, err)
		return nil, err
	}
	s.log.Debug("mysql greeting", "route", s.opts.Route, "server_version", g.serverVersion,
		"auth_plugin", g.authPlugin, "capabilities", g.capabilities)
	return g, nil
}

// parseUsableGreeting parses a greeting and checks that the server offers TLS and the 4.1
// protocol.
func parseUsableGreeting(p []byte) (*greeting, error) {
	g, err := parseGreeting(p)
	if err != nil {
		return nil, err
	}
	if g.capabilities&mysql.CLIENT_PROTOCOL_41 == 0 {
		return nil, fmt.Errorf("server %q does not support protocol 4.1", g.serverVersion)
	}
	if g.capabilities&mysql.CLIENT_SSL == 0 {
		return nil, fmt.Errorf("server %q does not support TLS", g.serverVersion)
	}
	return g, nil
}

// Sequence ids of an ERR packet sent while the client's HandshakeResponse41 is read, numbered
// as MariaDB 10.11.19 numbers them. An HTTP request or a packet with the wrong sequence id
// ("Got packets out of order") gets ERR 1, because no response was taken. A packet with
// sequence id 1 that is not a valid response ("Bad handshake") gets ERR 2.
const (
	seqNoResponse    = 1 // no packet with sequence id 1 was read
	seqAfterResponse = 2 // the reply to a packet with sequence id 1
)

// readResponse reads the client's HandshakeResponse41. Input the agent cannot use (HTTP, TLS,
// SSLRequest, HandshakeResponse320, malformed packets) gets an ERR.
func (s *session) readResponse() (*response, error) {
	var header [packetHeaderLen]byte
	if _, err := io.ReadFull(s.client, header[:]); err != nil {
		return nil, s.responseReadError(seqNoResponse, err)
	}
	if protocol := foreignProtocol(header); protocol != "" {
		return nil, s.clientError(seqNoResponse, codeHandshakeError, stateCommunication, true,
			fmt.Sprintf("received %s on a MySQL port", protocol))
	}
	errSeq := byte(seqNoResponse)
	if header[3] == 1 {
		errSeq = seqAfterResponse
	}
	seq, p, err := readPayload(s.client, header, maxResponseLen)
	if errors.Is(err, errPacketTooLong) {
		return nil, s.clientError(errSeq, codeHandshakeError, stateCommunication, true,
			fmt.Sprintf("handshake response: %v", err))
	}
	if err != nil {
		return nil, s.responseReadError(errSeq, err)
	}
	if seq != 1 {
		return nil, s.clientError(errSeq, codeHandshakeError, stateCommunication, true,
			fmt.Sprintf("handshake response has sequence id %d, want 1", seq))
	}
	resp, err := parseResponse(p)
	switch {
	case err != nil:
		return nil, s.clientError(errSeq, codeHandshakeError, stateCommunication, true, err.Error())
	case resp.sslRequest:
		return nil, s.clientError(errSeq, codeHandshakeError, stateCommunication, true,
			"TLS is not offered on the agent's loopback listener; connect without TLS")
	case resp.capabilities&mysql.CLIENT_PROTOCOL_41 == 0:
		return nil, s.clientError(errSeq, codeOldClient, stateOldClient, false,
			"client does not support protocol 4.1; upgrade the client")
	}
	return resp, nil
}

// clientSwitchPlugin returns the plugin that the client is switched to after its
// HandshakeResponse41, or "" when it gets the login result at once.
//
// A client that uses another plugin than the greeting's (mariadb --default-auth, a client
// without caching_sha2_password at a MySQL 8 greeting) does not pass the greeting's scramble
// to that plugin. The plugin sends an empty auth response and waits for data of its own,
// which a server sends in an AuthSwitchRequest. The agent does the same for the plugins whose
// data format it implements. Given data, sha256_password would request the server's RSA key
// over the plaintext leg, so it is switched to mysql_native_password instead. For the same
// reason a sha256_password client whose first response is the RSA key request (0x01), as at
// a sha256_password greeting, is switched too.
func clientSwitchPlugin(resp *response, g *greeting) string {
	if resp.capabilities&mysql.CLIENT_PLUGIN_AUTH == 0 {
		return ""
	}
	if resp.authPlugin == mysql.AUTH_SHA256_PASSWORD && bytes.Equal(resp.authResponse, []byte{1}) {
		return mysql.AUTH_NATIVE_PASSWORD
	}
	if resp.authPlugin == g.authPlugin || len(resp.authResponse) > 0 {
		return ""
	}
	switch resp.authPlugin {
	case mysql.AUTH_NATIVE_PASSWORD, mysql.AUTH_CACHING_SHA2_PASSWORD, mysql.AUTH_MARIADB_ED25519:
		return resp.authPlugin
	case mysql.AUTH_SHA256_PASSWORD:
		return mysql.AUTH_NATIVE_PASSWORD
	}
	return ""
}

// switchClient sends the client an AuthSwitchRequest to plugin, with data in that plugin's
// format, and reads the client's reply into resp in place of its first auth response. The
// login result then follows with sequence id 4.
func (s *session) switchClient(resp *response, plugin string) error {
	data := append(newScramble(), 0)
	if plugin == mysql.AUTH_MARIADB_ED25519 {
		data = make([]byte, ed25519NonceLen)
		rand.Read(data)
	}
	p := append([]byte{authSwitchRequest}, plugin...)
	p = append(p, 0)
	if err := writePacket(s.client, 2, append(p, data...)); err != nil {
		return fmt.Errorf("client auth switch request: %w", err)
	}
	const errSeq = 4 // an ERR follows the client's reply, which has sequence id 3
	seq, reply, err := readPacket(s.client, maxResponseLen)
	switch {
	case errors.Is(err, errPacketTooLong):
		return s.clientError(errSeq, codeHandshakeError, stateCommunication, true,
			fmt.Sprintf("auth switch response: %v", err))
	case err != nil:
		return s.responseReadError(errSeq, err)
	case seq != 3:
		return s.clientError(errSeq, codeHandshakeError, stateCommunication, true,
			fmt.Sprintf("auth switch response has sequence id %d, want 3", seq))
	}
	s.log.Debug("mysql client switched plugin", "route", s.opts.Route, "from", resp.authPlugin, "to", plugin)
	resp.authPlugin, resp.authResponse = plugin, reply
	s.resultSeq = 4
	return nil
}

// responseReadError wraps a failed read of the client's response. When the login timeout
// ended it, the client still gets an ERR with sequence id seq saying so.
func (s *session) responseReadError(seq byte, err error) error {
	if s.ctx.Err() != nil {
		msg := fmt.Sprintf("dbproxy route %q: login timed out: no handshake response from the client", s.opts.Route)
		s.sendError(seq, errPacket(codeHandshakeError, stateCommunication, msg, true))
	}
	return handshake.ClientReadError(s.ctx, fmt.Errorf("client handshake response: %w", err))
}

// foreignProtocol names the protocol when a packet header is really the start of an HTTP
// request or a TLS ClientHello, and returns "" otherwise.
func foreignProtocol(header [packetHeaderLen]byte) string {
	for _, method := range []string{"GET ", "POST", "PUT ", "HEAD", "DELE", "OPTI", "PATC", "CONN", "PRI "} {
		if string(header[:]) == method {
			return "an HTTP request"
		}
	}
	if header[0] == 0x16 && header[1] == 0x03 {
		return "a TLS ClientHello without SSLRequest"
	}
	return ""
}

// clientError sends the client an ERR packet with sequence id seq and returns an error
// wrapping ErrClientProtocol.
func (s *session) clientError(seq byte, code uint16, state string, protocol41 bool, msg string) error {
	full := fmt.Sprintf("dbproxy route %q: %s", s.opts.Route, msg)
	s.sendError(seq, errPacket(code, state, full, protocol41))
	return fmt.Errorf("client handshake response: %w: %s", ErrClientProtocol, msg)
}

// sendAgentError sends the client an ERR for a failure of the agent. It is best effort,
// because the error that Handshake returns already describes the failure.
func (s *session) sendAgentError(seq byte, cause error) {
	s.sendError(seq, agentErrPacket(s.ctx, s.opts.Route, cause))
}

// sendError writes an ERR packet to the client. When ctx has ended, which also set a past
// deadline on the client, the write gets errorWriteTimeout of its own, so that a client
// still learns that the login timed out.
func (s *session) sendError(seq byte, payload []byte) {
	if s.ctx.Err() != nil {
		s.stop()
		s.client.SetWriteDeadline(time.Now().Add(errorWriteTimeout))
	}
	if err := writePacket(s.client, seq, payload); err != nil {
		s.log.Debug("mysql client error not sent", "route", s.opts.Route, "err", err)
	}
}

// sendOK forwards the server's OK. A client that sent a caching_sha2_password scramble waits
// for AuthMoreData first, so it gets the fast-auth-success marker (0x01 0x03) before the OK.
// No other client plugin expects more than OK after its response.
func (s *session) sendOK(resp *response, ok []byte) error {
	seq := s.resultSeq
	if resp.authPlugin == mysql.AUTH_CACHING_SHA2_PASSWORD && len(resp.authResponse) > 0 {
		if err := writePacket(s.client, seq, []byte{authMoreData, fastAuthSuccessByte}); err != nil {
			return err
		}
		seq++
	}
	return writePacket(s.client, seq, ok)
}

// upstreamResponse returns the client's response with the capabilities that both the client
// and the server have, plus the ones the agent needs upstream. Flags that shape the command
// stream (CLIENT_DEPRECATE_EOF, CLIENT_COMPRESS, CLIENT_ZSTD_COMPRESSION_ALGORITHM,
// CLIENT_SESSION_TRACK, ...) then match on both legs, as the splice requires.
func upstreamResponse(resp *response, g *greeting) *response {
	up := *resp
	up.capabilities = resp.capabilities&g.capabilities | upstreamCapabilities
	up.capabilities |= g.capabilities & mysql.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
	// A session in sandbox mode could run only SET PASSWORD, which would leave the stored
	// secret wrong. Without this flag a server that disconnects on expired passwords sends
	// error 1862 instead.
	up.capabilities &^= mysql.CLIENT_CAN_HANDLE_EXPIRED_PASSWORDS
	up.capabilities &^= mysql.CLIENT_CONNECT_WITH_DB
	if resp.database != "" {
		up.capabilities |= mysql.CLIENT_CONNECT_WITH_DB
	}
	up.extCapabilities = resp.extCapabilities & g.extCapabilities
	return &up
}

// retry handles a 1045 from the first login. It calls opts.Redial for a new connection and
// fresh credentials and logs in once more. It returns the login whose result the client
// gets, which is the first one when the credentials are unchanged or the redial failed.
func (s *session) retry(first *login, resp, up *response) (*login, error) {
	first.conn.Close()
	conn, creds, err := s.opts.Redial(s.ctx)
	if err != nil {
		if !errors.Is(err, ErrCredentialsUnchanged) {
			s.log.Debug("mysql redial failed", "route", s.opts.Route, "err", err)
		}
		return first, nil
	}
	stop := watchContext(s.ctx, conn)
	defer stop()
	fail := func(err error) (*login, error) {
		conn.Close()
		s.sendAgentError(s.resultSeq, err)
		return nil, err
	}

	_, p, err := readPacket(conn, maxGreetingLen)
	if err != nil {
		return fail(fmt.Errorf("retry: upstream greeting: %w", upstreamReadError(err)))
	}
	if len(p) > 0 && p[0] == mysql.ERR_HEADER {
		conn.Close()
		return &login{conn: first.conn, rejected: parseErrPacket(p), errRaw: p}, nil
	}
	g, err := parseUsableGreeting(p)
	if err != nil {
		return fail(fmt.Errorf("retry: upstream greeting: %w: %w", ErrUpstreamProtocol, err))
	}
	up2 := upstreamResponse(resp, g)
	if up2.capabilities != up.capabilities || up2.extCapabilities != up.extCapabilities {
		return fail(fmt.Errorf("retry: %w: server capabilities changed", ErrUpstreamProtocol))
	}
	l, err := loginUpstream(s.ctx, conn, g, up2, creds, s.opts.TLSConfig)
	if err != nil {
		return fail(fmt.Errorf("retry: %w", err))
	}
	return l, nil
}

// endUpstream ends an upstream connection whose client left before logging in, the way a
// well-behaved client does: log in as creds, then COM_QUIT. MySQL and MariaDB count a
// connection that ends during the login phase against max_connect_errors and block the
// agent's host (error 1129) after that many, so health probes must not end that way. A
// successful login resets the count. It runs on a fresh timeout because ctx may be the
// reason the client is gone.
func (s *session) endUpstream(upstream net.Conn, g *greeting, creds credsource.Credentials) {
	s.stop()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(s.ctx), quitTimeout)
	defer cancel()
	handshake.ClearDeadlines(upstream)
	stop := watchContext(ctx, upstream)
	defer stop()

	resp := &response{capabilities: g.capabilities & (mysql.CLIENT_LONG_PASSWORD |
		mysql.CLIENT_LONG_FLAG | mysql.CLIENT_TRANSACTIONS), charset: g.charset}
	l, err := loginUpstream(ctx, upstream, g, upstreamResponse(resp, g), creds, s.opts.TLSConfig)
	if err != nil || l.rejected != nil {
		s.log.Debug("mysql upstream login after client left failed", "route", s.opts.Route,
			"err", errors.Join(err, errorOrNil(l)))
		return
	}
	if err := writePacket(l.conn, 0, []byte{mysql.COM_QUIT}); err != nil {
		s.log.Debug("mysql upstream COM_QUIT failed", "route", s.opts.Route, "err", err)
	}
	// Wait for the server to close, so that the close is the server's and not a reset.
	l.conn.SetReadDeadline(time.Now().Add(time.Second))
	io.Copy(io.Discard, io.LimitReader(l.conn, 1<<10))
	l.conn.Close()
}

func errorOrNil(l *login) error {
	if l == nil || l.rejected == nil {
		return nil
	}
	return l.rejected
}

// watchContext is handshake.WatchContext with a stop function that also waits for a deadline
// update that ctx has already started. Handshake clears deadlines after stopping the watch
// (to send a last ERR, or to end the upstream connection politely), and a late update would
// undo that.
func watchContext(ctx context.Context, conns ...net.Conn) (stop func()) {
	done := make(chan struct{})
	stopWatch := context.AfterFunc(ctx, func() {
		defer close(done)
		past := time.Unix(1, 0)
		for _, c := range conns {
			c.SetDeadline(past)
		}
	})
	return sync.OnceFunc(func() {
		if !stopWatch() {
			<-done // the first stop returns false only when the update has started
		}
	})
}
