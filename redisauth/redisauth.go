package redisauth

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

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
	// ErrAuthFailed: the upstream rejected the stored credentials; the client was sent the
	// server's own error.
	ErrAuthFailed = handshake.ErrAuthFailed
	// ErrUpstreamProtocol: the upstream broke the protocol, declined TLS or asked for an
	// unsupported authentication method.
	ErrUpstreamProtocol = handshake.ErrUpstreamProtocol
	// ErrCredentialsUnchanged: what Options.Redial returns (wrapped) when the re-fetched
	// credentials are the rejected ones.
	ErrCredentialsUnchanged = handshake.ErrCredentialsUnchanged
)

const (
	// upstreamBufferSize is the read buffer on the upstream connection, which must hold
	// the whole reply to AUTH. Redis 7.0.15's WRONGPASS reply is 65 bytes, so 1 KiB leaves
	// room for longer error texts.
	upstreamBufferSize = 1024
	// maxErrorText bounds the text of an error reply that the agent writes to a client.
	maxErrorText = 512
	// firstCommandTimeout bounds the wait for the client's first command when the agent
	// has only an error to send back.
	firstCommandTimeout = 5 * time.Second
	// maxFirstCommandLen bounds the bytes of the first command read before the error reply
	// is sent: enough for any login command, far less than a large SET.
	maxFirstCommandLen = 1 << 20
	// lingerTimeout bounds the time spent replying to commands with an error and
	// waiting for the client to close, so that closing the socket with unread input does
	// not reset the connection before the client has read the reply.
	lingerTimeout = time.Second
	// maxErrorReplies bounds the number of commands that get the error reply.
	maxErrorReplies = 16
)

// Handshake opens TLS on upstream, logs in with creds (AUTH user password, or AUTH
// password when creds.Username is empty) and returns the connections for the splice. The
// client connection it returns rewrites the client's AUTH and HELLO credentials and
// rejects RESET; see the package documentation.
//
// When the login fails, Handshake reads the client's first command, replies to it with
// an error that names the route (keeping the server's error code, such as WRONGPASS),
// and returns an error. An error reply to AUTH wraps ErrAuthFailed; opts.Redial, when set,
// gets one chance to supply a new connection and credentials first.
func Handshake(ctx context.Context, client, upstream net.Conn, creds credsource.Credentials, opts Options) (Conns, error) {
	log := opts.Log()
	stop := handshake.WatchContext(ctx, client, upstream)
	defer stop()

	// TLS from the first byte, then AUTH.
	conn, err := login(ctx, upstream, creds, opts)

	// An error reply to AUTH: retry once on a new connection with re-fetched credentials.
	var rejected *authError
	if errors.As(err, &rejected) && opts.Redial != nil {
		log.Debug("redis upstream rejected the credentials; retrying", "route", opts.Route)
		conn, creds, err = redial(ctx, creds, err, opts)
		if err == nil {
			upstream.Close() // the session continues on the new connection
		}
	}
	if err != nil {
		reply := errorReply(ctx, opts.Route, err)
		err = handshake.ContextError(ctx, err)
		stop()
		handshake.ClearDeadlines(client)
		replyCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), firstCommandTimeout)
		defer cancel()
		if werr := replyToFirstCommand(replyCtx, client, reply); werr != nil {
			log.Debug("redis error reply not delivered", "route", opts.Route, "err", werr)
		}
		return Conns{}, err
	}

	stop()
	handshake.ClearDeadlines(client, conn)
	log.Debug("redis upstream login succeeded", "route", opts.Route, "user", creds.Username)
	up := &upstreamConn{BufferedConn: conn, scanner: replyScanner{route: opts.Route, logger: log}}
	commands := newCommandReader(client, opts.Route, creds.Username, creds.Password)
	commands.logger = log
	cc := &clientConn{Conn: client, commands: commands}
	return Conns{Client: cc, Upstream: up}, nil
}

// redial runs opts.Redial after the first login failed with firstErr and logs in on the
// new connection. It returns firstErr when the credentials are unchanged.
func redial(ctx context.Context, creds credsource.Credentials, firstErr error, opts Options) (*handshake.BufferedConn, credsource.Credentials, error) {
	upstream, fresh, err := opts.Redial(ctx)
	if errors.Is(err, ErrCredentialsUnchanged) {
		return nil, creds, firstErr
	}
	if err != nil {
		return nil, creds, fmt.Errorf("%w (retry: %w)", firstErr, err)
	}
	stop := handshake.WatchContext(ctx, upstream)
	defer stop()
	conn, err := login(ctx, upstream, fresh, opts)
	if err != nil {
		upstream.Close()
		return nil, creds, err
	}
	return conn, fresh, nil
}

// authError is an error reply from the server to AUTH, such as "WRONGPASS invalid
// username-password pair or user is disabled.".
type authError struct {
	Code string // the first word of the reply: WRONGPASS, ERR, ...
	Text string // the rest of the reply
}

func (e *authError) Error() string {
	return fmt.Sprintf("upstream auth: %s %s", e.Code, e.Text)
}

func (e *authError) Unwrap() error { return ErrAuthFailed }

// login opens TLS on raw, sends AUTH with creds and reads the reply.
func login(ctx context.Context, raw net.Conn, creds credsource.Credentials, opts Options) (*handshake.BufferedConn, error) {
	tc, err := handshake.StartTLS(ctx, raw, opts.TLSConfig)
	if err != nil {
		return nil, err
	}
	conn := handshake.NewBufferedConn(tc, upstreamBufferSize)

	// AUTH [username] password
	var auth []byte
	if creds.Username == "" {
		auth = appendCommand(nil, "AUTH", creds.Password)
	} else {
		auth = appendCommand(nil, "AUTH", creds.Username, creds.Password)
	}
	if _, err := conn.Write(auth); err != nil {
		return nil, fmt.Errorf("upstream auth: send AUTH: %w", err)
	}

	// +OK, or an error reply. A first byte that starts no RESP reply fails at once, instead
	// of waiting for a line end that a server of another protocol may never send.
	first, err := conn.R.Peek(1)
	if err != nil {
		return nil, fmt.Errorf("upstream auth: read reply: %w", err)
	}
	if !isReplyType(first[0]) {
		return nil, fmt.Errorf("upstream auth: reply starts with byte 0x%02x, which starts no RESP reply (is the upstream port a Redis server?): %w",
			first[0], ErrUpstreamProtocol)
	}
	line, err := conn.R.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		return nil, fmt.Errorf("upstream auth: reply longer than %d bytes: %w", upstreamBufferSize, ErrUpstreamProtocol)
	}
	if err != nil {
		return nil, fmt.Errorf("upstream auth: read reply: %w", err)
	}
	line = bytes.TrimRight(line, "\r\n")
	switch {
	case string(line) == "+OK":
		return conn, nil
	case len(line) > 1 && line[0] == '-':
		code, text, _ := strings.Cut(string(line[1:]), " ")
		return nil, &authError{Code: sanitize(code), Text: sanitize(text)}
	}
	return nil, fmt.Errorf("upstream auth: unexpected reply %.40q: %w", line, ErrUpstreamProtocol)
}

// isReplyType reports whether b is a RESP2 or RESP3 type byte that can start a reply.
// The ';' and '.' types appear only inside a streamed string or aggregate.
func isReplyType(b byte) bool {
	switch b {
	case '+', '-', ':', '$', '*', '_', ',', '#', '!', '=', '(', '%', '~', '>', '|':
		return true
	}
	return false
}

// Reject reports to a client that the agent could not set up its session. Redis clients
// speak first, so it reads the client's first command (bounded by ctx, firstCommandTimeout
// and maxFirstCommandLen) and replies with "-ERR dbproxy route "NAME": cause", as
// replyToFirstCommand describes. It half-closes the client connection after the reply and
// leaves closing it to the caller.
func Reject(ctx context.Context, client net.Conn, route string, cause error) error {
	ctx, cancel := context.WithTimeout(ctx, firstCommandTimeout)
	defer cancel()
	return replyToFirstCommand(ctx, client, errorReply(context.Background(), route, cause))
}

// errorReply formats err as a RESP simple error naming the route, as clientErrorText words
// it for ctx. For an error reply to AUTH it keeps the server's error code, so that clients
// see WRONGPASS as WRONGPASS.
func errorReply(ctx context.Context, route string, err error) []byte {
	code, text := "ERR", "session setup failed"
	var rejected *authError
	switch {
	case errors.As(err, &rejected):
		code = rejected.Code
		text = "upstream rejected the stored credentials: " + rejected.Text
	case err != nil:
		text = handshake.ClientErrorText(ctx, err)
	}
	msg := sanitize(fmt.Sprintf("%s dbproxy route %s: %s", code, strconv.Quote(route), text))
	if len(msg) > maxErrorText {
		msg = msg[:maxErrorText]
	}
	return []byte("-" + msg + "\r\n")
}

// sanitize replaces the line breaks that would end a RESP simple string early.
func sanitize(s string) string {
	return strings.NewReplacer("\r", " ", "\n", " ").Replace(s)
}

// replyToFirstCommand reads the client's first command and replies to it with reply. Some
// clients send more commands before they look at a reply: go-redis, for example, falls
// back from HELLO to AUTH. So the next commands get the same reply too, up to
// maxErrorReplies within lingerTimeout, before the connection is half-closed.
func replyToFirstCommand(ctx context.Context, client net.Conn, reply []byte) error {
	stop := handshake.WatchContext(ctx, client)
	defer stop()
	in := bufio.NewReaderSize(io.LimitReader(client, maxFirstCommandLen), 4096)

	// Read errors do not matter here: the reply goes out in any case.
	_ = skipCommand(in)
	stop()
	client.SetDeadline(time.Now().Add(lingerTimeout))
	defer client.SetDeadline(time.Time{})
	if _, err := client.Write(reply); err != nil {
		return fmt.Errorf("write error reply: %w", err)
	}
	for range maxErrorReplies - 1 {
		if skipCommand(in) != nil {
			break
		}
		if _, err := client.Write(reply); err != nil {
			break
		}
	}
	handshake.CloseWrite(client)
	io.Copy(io.Discard, in)
	return nil
}

// skipCommand reads one command, an array of bulk strings or an inline line, from r.
func skipCommand(r *bufio.Reader) error {
	line, err := readLine(r)
	if err != nil {
		return err
	}
	if len(line) == 0 || line[0] != '*' {
		return nil // an inline command: the line was all of it
	}
	count, ok := parseInteger(bytes.TrimRight(line[1:], "\r\n"))
	if !ok || count > maxMultibulkLen {
		return errors.New("invalid multibulk length")
	}
	for range count {
		header, err := readLine(r)
		if err != nil {
			return err
		}
		size, err := bulkSize(header)
		if err != nil {
			return err
		}
		if _, err := r.Discard(int(size) + 2); err != nil {
			return err
		}
	}
	return nil
}

// readLine reads up to '\n', at most maxInlineLen bytes.
func readLine(r *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		part, err := r.ReadSlice('\n')
		if len(line)+len(part) > maxInlineLen {
			return nil, errors.New("line too long")
		}
		if err == nil && line == nil {
			return part, nil
		}
		line = append(line, part...)
		if err != bufio.ErrBufferFull {
			return line, err
		}
	}
}
