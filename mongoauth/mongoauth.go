package mongoauth

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"go.mongodb.org/mongo-driver/x/bsonx/bsoncore"

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

// Errors that Handshake wraps, for errors.Is.
var (
	// ErrAuthFailed means the upstream rejected the stored credentials (code 18,
	// AuthenticationFailed). The client's hello has already received a code 18 error reply.
	ErrAuthFailed = handshake.ErrAuthFailed
	// ErrClientProtocol means the client's first message was not a hello, was malformed, or
	// carried credentials of its own. The client has already been sent a command error.
	ErrClientProtocol = handshake.ErrClientProtocol
	// ErrClientClosed means the client closed or reset its connection before the login
	// finished.
	ErrClientClosed = handshake.ErrClientClosed
	// ErrUpstreamProtocol means the upstream sent a malformed or unexpected reply, failed its
	// hello, offered no usable SCRAM mechanism or did not prove its SCRAM server signature.
	ErrUpstreamProtocol = handshake.ErrUpstreamProtocol
	// ErrCredentialsUnchanged is what an Options.Redial returns (wrapped) when re-fetching
	// brought the same credentials. Handshake then reports the first rejection.
	ErrCredentialsUnchanged = handshake.ErrCredentialsUnchanged
)

// MongoDB error codes sent to the client, as named in the server's error_codes.yml.
const (
	codeBadValue             = 2
	codeHostUnreachable      = 6
	codeAuthenticationFailed = 18
)

// errorReplyTimeout bounds the write of the error reply after a failed login, which may
// happen after ctx has expired.
const errorReplyTimeout = time.Second

// defaultAuthSource is the authentication database when the credentials name none.
const defaultAuthSource = "admin"

// Handshake runs the MongoDB login phase for one client connection.
//
// It reads the client's first message, which must be a hello (OP_MSG hello, or OP_QUERY
// isMaster/ismaster on <db>.$cmd), opens TLS on upstream, and sends the client's hello
// upstream as the connection's first command, so the server records the client's own
// metadata. The agent adds speculativeAuthenticate (a SCRAM saslStart) and saslSupportedMechs
// for the stored user, and finishes SCRAM with saslContinue. The client then gets the
// server's hello reply, without the authentication fields, in its request's opcode family.
//
// On success both connections have no deadline and the returned Conns are ready for the
// splice. On failure the client has been sent a command error, and the caller closes client
// and upstream. A connection returned by Options.Redial is closed by Handshake on failure.
func Handshake(ctx context.Context, client, upstream net.Conn, creds credsource.Credentials, opts Options) (Conns, error) {
	stop := handshake.WatchContext(ctx, client, upstream)
	defer stop()
	log := opts.Log().With("route", opts.Route)

	// Client hello: OP_MSG hello or OP_QUERY isMaster, read before anything is sent upstream.
	hello, err := readClientHello(client, opts.Route)
	if err != nil {
		return Conns{}, handshake.ClientReadError(ctx, err)
	}
	log.Debug("client hello", "command", hello.name, "opcode", hello.opcode.String())

	// Upstream TLS, hello with speculativeAuthenticate, then SCRAM to the end.
	conn, reply, err := login(ctx, upstream, creds, hello, opts)
	if errors.Is(err, ErrAuthFailed) && opts.Redial != nil {
		conn, reply, err = retryLogin(ctx, conn, hello, err, opts)
	}
	if err != nil {
		// The client gets its error reply even when ctx ended the login.
		stop()
		client.SetWriteDeadline(time.Now().Add(errorReplyTimeout))
		sendLoginError(ctx, client, hello, creds, opts.Route, err)
		return Conns{}, handshake.ContextError(ctx, err)
	}

	// Hello reply to the client, in the opcode family of its request.
	warnIfReplicaSet(log, reply)
	out, err := clientHelloReply(reply)
	if err != nil {
		conn.Close()
		return Conns{}, fmt.Errorf("hello reply: %w: %w", ErrUpstreamProtocol, err)
	}
	if _, err := client.Write(replyTo(hello, out)); err != nil {
		conn.Close()
		return Conns{}, handshake.ContextError(ctx, fmt.Errorf("write hello reply to client: %w", err))
	}

	stop()
	handshake.ClearDeadlines(client, conn)
	return Conns{Client: newClientGuard(client, opts.Route), Upstream: conn}, nil
}

// retryLogin calls opts.Redial once after the upstream rejected the credentials and logs in
// again on the new connection. It closes the rejected connection (conn, when not nil). When
// the redial fails or brings unchanged credentials, it returns firstErr.
func retryLogin(ctx context.Context, conn net.Conn, hello *command, firstErr error, opts Options) (net.Conn, bsoncore.Document, error) {
	log := opts.Log().With("route", opts.Route)
	if conn != nil {
		conn.Close()
	}
	upstream, creds, err := opts.Redial(ctx)
	if err != nil {
		if !errors.Is(err, ErrCredentialsUnchanged) {
			log.Error("redial after rejected credentials failed", "err", err)
		}
		return nil, nil, firstErr
	}
	log.Info("upstream rejected the credentials, retrying once with re-fetched credentials")
	stop := handshake.WatchContext(ctx, upstream)
	defer stop()
	conn, reply, err := login(ctx, upstream, creds, hello, opts)
	if err != nil {
		if conn != nil {
			conn.Close()
		}
		upstream.Close()
		return nil, nil, err
	}
	return conn, reply, nil
}

// login opens TLS on upstream, sends hello with speculative SCRAM authentication and finishes
// the SCRAM conversation. It returns the TLS connection (also on an authentication failure,
// so the caller can close it) and the server's hello reply.
func login(ctx context.Context, upstream net.Conn, creds credsource.Credentials, hello *command, opts Options) (net.Conn, bsoncore.Document, error) {
	conn, err := handshake.StartTLS(ctx, upstream, opts.TLSConfig)
	if err != nil {
		return nil, nil, err
	}
	authDB := creds.AuthSource
	if authDB == "" {
		authDB = defaultAuthSource
	}
	reply, err := authenticate(conn, creds, authDB, hello, opts)
	if err != nil {
		return conn, nil, err
	}
	return conn, reply, nil
}

// authenticate sends the client's hello with speculativeAuthenticate and completes SCRAM,
// through saslContinue after an accepted speculative start, or through a full
// saslStart/saslContinue exchange when the server ignored it.
func authenticate(conn *tls.Conn, creds credsource.Credentials, authDB string, hello *command, opts Options) (bsoncore.Document, error) {
	log := opts.Log().With("route", opts.Route)

	// Upstream hello: the client's command plus speculativeAuthenticate (SCRAM-SHA-256
	// client-first) and saslSupportedMechs.
	scramClient, err := scramClients.get(mechanismSHA256, creds.Username, creds.Password)
	if err != nil {
		return nil, err
	}
	conv := scramClient.NewConversation()
	clientFirst, err := conv.Step("")
	if err != nil {
		return nil, fmt.Errorf("SCRAM client-first message: %w", err)
	}
	body, err := upstreamHello(hello, authDB, creds.Username, clientFirst)
	if err != nil {
		return nil, err
	}
	reply, err := roundTrip(conn, body, hello.sequences)
	if err != nil {
		return nil, fmt.Errorf("upstream hello: %w", err)
	}
	if err := commandError(reply); err != nil {
		return nil, fmt.Errorf("upstream hello: %w", err)
	}

	// Speculative authentication accepted: continue the same conversation.
	if first, ok := reply.Lookup("speculativeAuthenticate").DocumentOK(); ok {
		log.Debug("upstream accepted speculative authentication", "mechanism", mechanismSHA256)
		if err := continueSCRAM(conn, conv, authDB, first); err != nil {
			return nil, err
		}
		return reply, nil
	}

	// Speculative authentication ignored: saslStart with the mechanism the user supports.
	mechanism, err := chooseMechanism(reply)
	if err != nil {
		return nil, err
	}
	log.Debug("upstream ignored speculative authentication", "mechanism", mechanism)
	if err := runSCRAM(conn, creds.Username, creds.Password, authDB, mechanism); err != nil {
		return nil, err
	}
	return reply, nil
}

// sendLoginError replies to the client's hello with the error that ended the login: code 18 for
// rejected credentials, code 6 (HostUnreachable) for any other upstream failure.
func sendLoginError(ctx context.Context, client net.Conn, hello *command, creds credsource.Credentials, route string, err error) {
	text := handshake.ClientErrorText(ctx, err)
	var doc bsoncore.Document
	switch {
	case errors.Is(err, ErrAuthFailed):
		doc = errorDocument(codeAuthenticationFailed, "AuthenticationFailed", fmt.Sprintf(
			"route %q: the upstream server rejected the credentials stored for user %q (%s). Update the route's secret", route, creds.Username, text))
	case ctx.Err() != nil:
		doc = errorDocument(codeHostUnreachable, "HostUnreachable", fmt.Sprintf("route %q: %s", route, text))
	default:
		doc = errorDocument(codeHostUnreachable, "HostUnreachable", fmt.Sprintf(
			"route %q: login to the upstream server failed: %s", route, text))
	}
	// A write error here changes nothing: the caller closes the connection either way.
	client.Write(replyTo(hello, doc))
}
