package pgauth

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/knoxcall/dbproxy/credsource"
	"github.com/knoxcall/dbproxy/internal/handshake"
	"github.com/knoxcall/dbproxy/internal/splice"
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
	// ErrAuthFailed: the upstream rejected the stored credentials; the client was sent the
	// server's own error.
	ErrAuthFailed = handshake.ErrAuthFailed
	// ErrEncryptionDeclined: the client closed its connection right after the agent declined
	// its SSLRequest or GSSENCRequest. It also wraps ErrClientClosed.
	ErrEncryptionDeclined = handshake.ErrEncryptionDeclined
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
	// ErrCancelRequest: the connection carried a CancelRequest, which was forwarded.
	ErrCancelRequest = handshake.ErrCancelRequest
	// ErrTooManyConnections: the cause for which Reject sends SQLSTATE 53300.
	ErrTooManyConnections = handshake.ErrTooManyConnections
	// ErrCredentialsUnchanged: what Options.Redial returns (wrapped) when the re-fetched
	// credentials are the rejected ones.
	ErrCredentialsUnchanged = handshake.ErrCredentialsUnchanged
)

// readBufferSize is the buffer over each connection during the login. It equals the
// splice's small buffer, so once the bytes read ahead are drained, a bufio.Reader passes the
// splice's reads straight to the connection instead of copying through its buffer.
const readBufferSize = splice.SmallBufferSize

// maxCancelReply bounds what is read from the upstream after a CancelRequest. PostgreSQL
// sends nothing and closes the connection.
const maxCancelReply = 1 << 10

// Handshake runs the login phase of a PostgreSQL connection. It replies 'N' to the client's
// SSLRequest and GSSENCRequest packets, reads its StartupMessage, opens TLS to the
// upstream with an SSLRequest, logs in there as creds.Username with creds.Password and
// forwards the login result to the client. Every StartupMessage parameter except user
// reaches the upstream unchanged.
//
// A CancelRequest is forwarded to the upstream over TLS and returns an error wrapping
// ErrCancelRequest: there is no session to splice.
//
// On failure after the client's StartupMessage was read, the client has been sent either
// the upstream's own ErrorResponse or a FATAL ErrorResponse from the agent naming the route,
// so the caller must not call Reject as well. An upstream rejection of the credentials
// (SQLSTATE 28P01 or 28000 before AuthenticationOk) wraps ErrAuthFailed; when opts.Redial
// is set it is first retried once on the connection Redial returns.
func Handshake(ctx context.Context, client, upstream net.Conn, creds credsource.Credentials, opts Options) (Conns, error) {
	log := opts.Log().With("route", opts.Route)
	stop := watchContext(ctx, client, upstream)
	defer stop()

	// StartupMessage or CancelRequest, after replying to each SSLRequest and GSSENCRequest.
	clientConn := handshake.NewBufferedConn(client, readBufferSize)
	p, err := readClientStartup(clientConn.R, client)
	if err != nil {
		var perr *protocolError
		if errors.As(err, &perr) {
			sendFatal(ctx, client, &pgproto3.ErrorResponse{Code: perr.Code, Message: perr.Msg}, stop)
		}
		return Conns{}, handshake.ClientReadError(ctx, fmt.Errorf("read client startup: %w", err))
	}
	if p.Kind == packetCancelRequest {
		log.DebugContext(ctx, "forwarding CancelRequest")
		return Conns{}, handshake.ContextError(ctx, forwardCancel(ctx, upstream, p.Raw, opts.TLSConfig, log))
	}
	log.DebugContext(ctx, "client StartupMessage", "protocol", fmt.Sprintf("%d.%d", p.Version>>16, p.Version&0xffff),
		"parameters", paramNames(p.Params))

	// Upstream login: SSLRequest, TLS, StartupMessage, authentication, up to ReadyForQuery.
	session, reply, err := loginUpstream(ctx, upstream, p, creds, opts.TLSConfig, log)
	if errors.Is(err, ErrAuthFailed) && opts.Redial != nil {
		session, reply, err = retryLogin(ctx, p, opts, log, err)
		if err == nil {
			upstream.Close() // the server ended this login; the session runs on the new conn
		}
	}
	if err != nil {
		fail(ctx, client, opts.Route, err, stop)
		return Conns{}, handshake.ContextError(ctx, err)
	}

	// AuthenticationOk through ReadyForQuery, in one write.
	if _, err := client.Write(reply); err != nil {
		session.Close()
		return Conns{}, handshake.ContextError(ctx, fmt.Errorf("send login result to client: %w", err))
	}
	stop()
	if err := ctx.Err(); err != nil {
		session.Close()
		return Conns{}, err
	}
	handshake.ClearDeadlines(client, session)
	return Conns{Client: clientConn, Upstream: session}, nil
}

// retryLogin runs the login once more on the connection that opts.Redial returns. When the
// redial fails, the first rejection is final and its reply reaches the client.
func retryLogin(ctx context.Context, p startupPacket, opts Options, log *slog.Logger, firstErr error) (*handshake.BufferedConn, []byte, error) {
	log.DebugContext(ctx, "upstream rejected the credentials, redialing", "err", firstErr.Error())
	conn, creds, err := opts.Redial(ctx)
	if err != nil {
		if conn != nil {
			conn.Close()
		}
		log.DebugContext(ctx, "redial after authentication failure", "err", err.Error())
		return nil, nil, fmt.Errorf("%w (redial: %v)", firstErr, err)
	}
	stop := watchContext(ctx, conn)
	defer stop()
	session, reply, err := loginUpstream(ctx, conn, p, creds, opts.TLSConfig, log)
	if err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("after redial: %w", err)
	}
	return session, reply, nil
}

// loginUpstream opens TLS on conn and logs in. On success it returns the TLS session, with
// any bytes read after ReadyForQuery still buffered, and the messages for the client. A
// *serverError carries the upstream's ErrorResponse for the client.
func loginUpstream(ctx context.Context, conn net.Conn, p startupPacket, creds credsource.Credentials, cfg *tls.Config, log *slog.Logger) (*handshake.BufferedConn, []byte, error) {
	startup, err := upstreamStartupMessage(p, creds.Username)
	if err != nil {
		return nil, nil, fmt.Errorf("upstream StartupMessage: %w", err)
	}
	tc, err := startUpstreamTLS(ctx, conn, cfg)
	if err != nil {
		return nil, nil, err
	}
	session := handshake.NewBufferedConn(tc, readBufferSize)
	l := &upstreamLogin{r: session.R, w: tc, creds: creds, log: log, ctx: ctx}
	if err := l.run(startup); err != nil {
		return nil, nil, err
	}
	return session, l.reply, nil
}

// fail tells the client why the login ended: the upstream's ErrorResponse unchanged when
// there is one, otherwise a FATAL ErrorResponse from the agent.
func fail(ctx context.Context, client net.Conn, route string, err error, stopWatch func()) {
	var serr *serverError
	if errors.As(err, &serr) {
		writeFinal(ctx, client, serr.Reply, stopWatch)
		return
	}
	msg := fmt.Sprintf("dbproxy route %q: %s", route, handshake.ClientErrorText(ctx, err))
	sendFatal(ctx, client, &pgproto3.ErrorResponse{Code: handshakeCode(err), Message: msg}, stopWatch)
}

// forwardCancel sends a client's CancelRequest unchanged to the upstream over TLS, so keys of
// any length (protocol 3.2) pass through, and waits for the server to close the connection.
func forwardCancel(ctx context.Context, upstream net.Conn, raw []byte, cfg *tls.Config, log *slog.Logger) error {
	tc, err := startUpstreamTLS(ctx, upstream, cfg)
	if err != nil {
		return fmt.Errorf("forward CancelRequest: %w", err)
	}
	defer tc.Close()
	if _, err := tc.Write(raw); err != nil {
		return fmt.Errorf("forward CancelRequest: %w", err)
	}
	// The server closes the connection once it has read the request. Waiting for that before
	// the client's connection closes keeps the order libpq and pgx rely on: when they see
	// the close, the cancel has been delivered.
	if _, err := io.Copy(io.Discard, io.LimitReader(tc, maxCancelReply)); err != nil {
		log.DebugContext(ctx, "upstream connection after CancelRequest", "err", err.Error())
	}
	return fmt.Errorf("client connection: %w", ErrCancelRequest)
}

func paramNames(params []startupParam) []string {
	names := make([]string, len(params))
	for i, p := range params {
		names[i] = p.Name
	}
	return names
}
