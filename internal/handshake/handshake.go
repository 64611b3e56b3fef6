// Package handshake holds what the protocol packages (pgauth, myauth, mongoauth, redisauth)
// share: the options and result of a Handshake, the errors the proxy core branches on, and
// small connection helpers. The protocol packages re-export these names with type aliases,
// so callers never import this package.
package handshake

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/knoxcall/dbproxy/credsource"
)

// Errors that a Handshake wraps so that callers can classify a failure with errors.Is.
var (
	// ErrAuthFailed means the upstream rejected the stored credentials. The client has
	// already been sent the server's own error.
	ErrAuthFailed = errors.New("upstream rejected the credentials")
	// ErrEncryptionDeclined means the client closed its connection right after the agent
	// declined its request to encrypt the loopback leg, a PostgreSQL SSLRequest. A client
	// that requires TLS does this, and so does pgx with sslmode=prefer before it reconnects.
	ErrEncryptionDeclined = errors.New("client closed after its encryption request was declined")
	// ErrUpstreamRejected means the upstream rejected the session for a reason other than the
	// credentials, such as an unknown database or its own connection limit. The client has
	// already been sent the server's own error.
	ErrUpstreamRejected = errors.New("upstream rejected the session")
	// ErrClientProtocol means the client sent something the protocol does not allow at this
	// point, or that the agent refuses (a password, a TLS request it cannot honour).
	ErrClientProtocol = errors.New("client protocol error")
	// ErrClientClosed means the client closed or reset its connection before the login
	// finished.
	ErrClientClosed = errors.New("client closed the connection")
	// ErrUpstreamProtocol means the upstream sent something the protocol does not allow,
	// declined TLS, or asked for an authentication method the agent does not support.
	ErrUpstreamProtocol = errors.New("upstream protocol error")
	// ErrCancelRequest means the connection carried a PostgreSQL CancelRequest, which was
	// forwarded upstream; there is no session to splice.
	ErrCancelRequest = errors.New("cancel request forwarded")
	// ErrTooManyConnections is the cause given to Reject when a route is at its connection
	// limit. Each protocol replies with its own "too many connections" error.
	ErrTooManyConnections = errors.New("too many connections")
	// ErrCredentialsUnchanged is returned by an Options.Redial that re-fetched the
	// credentials after an authentication failure and found the same values, so retrying
	// would fail again.
	ErrCredentialsUnchanged = errors.New("re-fetched credentials are unchanged")
	// ErrUpstreamTLSHandshake means the TLS handshake with the upstream failed. A login
	// error without it failed before the handshake started or after it completed.
	ErrUpstreamTLSHandshake = errors.New("upstream tls handshake")
)

// Options configure one Handshake. The zero value is not usable: TLSConfig is required.
type Options struct {
	// Route is the route name shown in errors sent to the client and in log lines.
	Route string
	// TLSConfig configures the TLS connection to the upstream. It must not be nil: the
	// agent never talks to a database in plaintext.
	TLSConfig *tls.Config
	// Logger receives protocol-step lines at Debug level. Nil means no logging.
	Logger *slog.Logger
	// Redial, if not nil, is called once when the upstream rejects the credentials. It
	// returns a new upstream connection (already dialed, not yet TLS) and freshly fetched
	// credentials, and the Handshake retries the upstream login on it. It returns an error
	// wrapping ErrCredentialsUnchanged when the source still has the rejected values; the
	// Handshake then reports the first rejection.
	Redial func(ctx context.Context) (net.Conn, credsource.Credentials, error)
}

// Log returns the logger to use, never nil.
func (o *Options) Log() *slog.Logger {
	if o.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Logger
}

// Conns are the connections that a finished Handshake hands to the splice. Each may wrap the
// connection it came from, to return bytes read ahead during the handshake first or to filter
// the stream (Redis AUTH rewriting, for example). Both implement CloseWrite when the
// underlying connection does.
type Conns struct {
	Client   net.Conn
	Upstream net.Conn
}

// BufferedConn is a net.Conn whose reads come from R, a buffered reader over Conn, so bytes
// that a parser read ahead are not lost.
type BufferedConn struct {
	net.Conn
	R *bufio.Reader
}

// NewBufferedConn wraps c with a reader of the given buffer size.
func NewBufferedConn(c net.Conn, size int) *BufferedConn {
	return &BufferedConn{Conn: c, R: bufio.NewReaderSize(c, size)}
}

func (c *BufferedConn) Read(p []byte) (int, error) { return c.R.Read(p) }

// CloseWrite half-closes the underlying connection when it supports it.
func (c *BufferedConn) CloseWrite() error { return CloseWrite(c.Conn) }

// Unwrap returns the underlying connection.
func (c *BufferedConn) Unwrap() net.Conn { return c.Conn }

// CloseWrite shuts down the writing side of c if c supports it, and closes c otherwise.
func CloseWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

// WatchContext makes blocked reads and writes on conns return as soon as ctx is done, by
// setting a deadline in the past. The returned stop function ends the watch and reports
// whether it did so before ctx was done. Once stop has returned, the watch sets no more
// deadlines, so a following ClearDeadlines is final.
func WatchContext(ctx context.Context, conns ...net.Conn) (stop func() bool) {
	var (
		mu      sync.Mutex
		stopped bool
	)
	stopAfter := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		past := time.Unix(1, 0)
		for _, c := range conns {
			if c != nil {
				c.SetDeadline(past)
			}
		}
	})
	return func() bool {
		beforeDone := stopAfter()
		mu.Lock()
		stopped = true
		mu.Unlock()
		return beforeDone
	}
}

// tlsHint suggests a cause for a TLS handshake that ended without a TLS error. A server
// that closed the connection or sent nothing usually does not speak TLS on that port.
func tlsHint(ctx context.Context, err error) string {
	switch {
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET):
		return " (the server closed the connection: check that the upstream port has TLS enabled and speaks the route's protocol)"
	case errors.Is(ctx.Err(), context.DeadlineExceeded),
		ctx.Err() == nil && errors.Is(err, os.ErrDeadlineExceeded):
		return " (the server did not answer the TLS handshake: check that the upstream port has TLS enabled)"
	}
	return ""
}

// ClearDeadlines removes any deadline from conns.
func ClearDeadlines(conns ...net.Conn) {
	for _, c := range conns {
		if c != nil {
			c.SetDeadline(time.Time{})
		}
	}
}

// ContextError returns ctx.Err() when ctx is done, and err otherwise. The i/o timeout that
// the context watch caused is kept in the message but is less informative than ctx.Err().
func ContextError(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		return fmt.Errorf("%w (%v)", ctxErr, err)
	}
	return err
}

// ClientReadError classifies err, a failed read from the client during the login. It
// returns ContextError(ctx, err) when ctx is done, an error wrapping ErrClientClosed when the
// client closed or reset its connection, and err otherwise.
func ClientReadError(ctx context.Context, err error) error {
	if err == nil || ctx.Err() != nil {
		return ContextError(ctx, err)
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		return fmt.Errorf("%w: %w", ErrClientClosed, err)
	}
	return err
}

// StartTLS runs the client side of a TLS handshake on c with cfg, bounded by ctx.
func StartTLS(ctx context.Context, c net.Conn, cfg *tls.Config) (*tls.Conn, error) {
	if cfg == nil {
		return nil, errors.New("upstream tls: no TLS configuration")
	}
	tc := tls.Client(c, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("%w: %w%s", ErrUpstreamTLSHandshake, err, tlsHint(ctx, err))
	}
	return tc, nil
}
