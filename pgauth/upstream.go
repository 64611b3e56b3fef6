package pgauth

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"

	"github.com/knoxcall/dbproxy/credsource"
	"github.com/knoxcall/dbproxy/internal/handshake"
)

// Limits on what the upstream sends during the login phase.
const (
	// maxLoginMessageLength bounds a backend message before ReadyForQuery, its length word
	// included. libpq treats a longer message as corrupt unless its type may be long
	// (VALID_LONG_MESSAGE_TYPE in src/interfaces/libpq/fe-protocol3.c).
	maxLoginMessageLength = 30000
	// maxLongLoginMessageLength bounds ErrorResponse and NoticeResponse, which libpq accepts
	// at any length. 1 MiB is a chosen bound far above any message PostgreSQL composes.
	maxLongLoginMessageLength = 1 << 20
	// maxLoginMessages bounds the backend messages of one login. PostgreSQL 15 sends about 20
	// (authentication, ParameterStatus, BackendKeyData, ReadyForQuery); extensions and
	// notices add a few.
	maxLoginMessages = 1000
	// maxSSLReplyRead is how many bytes the read of the server's SSLRequest reply accepts.
	// The reply is one byte; more bytes in the same read mean an injection attempt.
	maxSSLReplyRead = 64
)

// errTLSDeclined means the upstream replied to the SSLRequest with something other than 'S'.
var errTLSDeclined = errors.New("upstream declined TLS")

// serverError is an ErrorResponse from the upstream. Reply holds the server's messages,
// the ErrorResponse last, which reach the client unchanged.
type serverError struct {
	Code       string
	Message    string
	AuthFailed bool
	Reply      []byte
}

func (e *serverError) Error() string {
	return fmt.Sprintf("upstream login: server error %s: %s", e.Code, e.Message)
}

func (e *serverError) Unwrap() error {
	if e.AuthFailed {
		return handshake.ErrAuthFailed
	}
	return handshake.ErrUpstreamRejected
}

func upstreamProtocolError(format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), handshake.ErrUpstreamProtocol)
}

// startUpstreamTLS sends an SSLRequest on conn, requires the reply 'S' with nothing after
// it, and runs the TLS handshake.
func startUpstreamTLS(ctx context.Context, conn net.Conn, cfg *tls.Config) (*tls.Conn, error) {
	if _, err := conn.Write(sslRequest); err != nil {
		return nil, fmt.Errorf("send SSLRequest upstream: %w", err)
	}
	var reply [maxSSLReplyRead]byte
	n, err := conn.Read(reply[:])
	if n == 0 {
		if err == nil || err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("read SSLRequest reply: %w (is the upstream port a PostgreSQL server?)", err)
	}
	switch reply[0] {
	case 'S':
	case 'N':
		return nil, fmt.Errorf("%w: server replied N to SSLRequest: %w", errTLSDeclined, handshake.ErrUpstreamProtocol)
	case 'E':
		// The ErrorResponse is plaintext and unauthenticated, so it is not shown to anyone.
		return nil, fmt.Errorf("%w: server replied to SSLRequest with an ErrorResponse: %w", errTLSDeclined, handshake.ErrUpstreamProtocol)
	default:
		return nil, fmt.Errorf("%w: server replied to SSLRequest with byte 0x%02x (is the upstream port a PostgreSQL server?): %w", errTLSDeclined, reply[0], handshake.ErrUpstreamProtocol)
	}

	// Bytes after 'S' would be read as if they came through TLS (CVE-2021-23222 in libpq).
	// A read can return them with the 'S', or they can wait in the socket. Bytes that arrive
	// later still reach the TLS handshake, which rejects them because they are not part of
	// its authenticated transcript.
	if n > 1 || bytesPending(conn) {
		return nil, upstreamProtocolError("upstream sent unencrypted bytes after accepting TLS")
	}
	return handshake.StartTLS(ctx, conn, cfg)
}

// readBackendMessage reads one backend message and returns its type and the whole message,
// type byte and length word included.
func readBackendMessage(r *bufio.Reader) (byte, []byte, error) {
	var header [5]byte
	if _, err := io.ReadFull(r, header[:]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, fmt.Errorf("read upstream message: %w", err)
	}
	typ := header[0]
	length := int64(int32(binary.BigEndian.Uint32(header[1:])))
	limit := int64(maxLoginMessageLength)
	if typ == 'E' || typ == 'N' {
		limit = maxLongLoginMessageLength
	}
	if length < 4 || length > limit {
		return typ, nil, upstreamProtocolError("upstream message %q has invalid length %d", typ, length)
	}
	msg := make([]byte, 1+length)
	copy(msg, header[:])
	if _, err := io.ReadFull(r, msg[5:]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return typ, nil, fmt.Errorf("read upstream message: %w", err)
	}
	return typ, msg, nil
}

// upstreamLogin is one login on one upstream TLS connection.
type upstreamLogin struct {
	r        *bufio.Reader
	w        *tls.Conn
	creds    credsource.Credentials
	log      *slog.Logger
	ctx      context.Context
	method   string
	scram    *scram.ClientConversation
	authDone bool
	// reply collects the messages for the client, written in one piece at the end.
	reply []byte
}

// run sends the StartupMessage and processes backend messages up to ReadyForQuery or an
// ErrorResponse. The returned error is a *serverError when the upstream sent one.
func (l *upstreamLogin) run(startup []byte) error {
	if _, err := l.w.Write(startup); err != nil {
		return fmt.Errorf("send StartupMessage upstream: %w", err)
	}
	for range maxLoginMessages {
		typ, msg, err := readBackendMessage(l.r)
		if err != nil {
			return err
		}
		switch typ {
		case 'R': // Authentication*
			if l.authDone {
				return upstreamProtocolError("upstream sent an authentication request after AuthenticationOk")
			}
			if err := l.authenticate(msg); err != nil {
				return err
			}
		case 'E': // ErrorResponse
			l.reply = append(l.reply, msg...)
			return l.serverError(msg)
		case 'N', 'v': // NoticeResponse, NegotiateProtocolVersion
			l.reply = append(l.reply, msg...)
		case 'S', 'K', 'Z': // ParameterStatus, BackendKeyData, ReadyForQuery
			if !l.authDone {
				return upstreamProtocolError("upstream sent message %q before AuthenticationOk", typ)
			}
			l.reply = append(l.reply, msg...)
			if typ == 'Z' {
				return nil
			}
		default:
			return upstreamProtocolError("upstream sent unexpected message %q during login", typ)
		}
	}
	return upstreamProtocolError("upstream sent more than %d messages without ReadyForQuery", maxLoginMessages)
}

func (l *upstreamLogin) serverError(msg []byte) error {
	var er pgproto3.ErrorResponse
	if err := er.Decode(msg[5:]); err != nil {
		return upstreamProtocolError("decode upstream ErrorResponse: %v", err)
	}
	// 28P01 is a wrong password; 28000 covers a role that may not log in and a pg_hba.conf
	// rejection. Either may be cured by credentials re-fetched after a rotation.
	authFailed := !l.authDone && (er.Code == codeInvalidPassword || er.Code == codeInvalidAuthSpec)
	return &serverError{Code: er.Code, Message: er.Message, AuthFailed: authFailed, Reply: l.reply}
}

// authenticate responds to one Authentication* message.
func (l *upstreamLogin) authenticate(msg []byte) error {
	body := msg[5:]
	if len(body) < 4 {
		return upstreamProtocolError("upstream authentication message too short")
	}
	authType := binary.BigEndian.Uint32(body)
	switch authType {
	case pgproto3.AuthTypeOk:
		if l.scram != nil && !l.scram.Valid() {
			// Without AuthenticationSASLFinal the server never proved that it has the
			// password, so it may be an impostor.
			return upstreamProtocolError("upstream sent AuthenticationOk before completing SCRAM")
		}
		l.authDone = true
		l.log.DebugContext(l.ctx, "upstream authenticated", "method", l.method)
		l.reply = append(l.reply, msg...)
		return nil
	case pgproto3.AuthTypeCleartextPassword:
		// Allowed only because this leg is TLS with the route's verification settings.
		l.method = "password"
		return l.send(&pgproto3.PasswordMessage{Password: l.creds.Password})
	case pgproto3.AuthTypeMD5Password:
		var req pgproto3.AuthenticationMD5Password
		if err := req.Decode(body); err != nil {
			return upstreamProtocolError("decode AuthenticationMD5Password: %v", err)
		}
		l.method = "md5"
		return l.send(&pgproto3.PasswordMessage{Password: md5Password(l.creds.Username, l.creds.Password, req.Salt)})
	case pgproto3.AuthTypeSASL:
		return l.startSCRAM(body)
	case pgproto3.AuthTypeSASLContinue:
		return l.continueSCRAM(body)
	case pgproto3.AuthTypeSASLFinal:
		return l.finishSCRAM(body)
	}
	return fmt.Errorf("upstream requested authentication method %s, which the agent does not support: %w",
		authMethodName(authType), handshake.ErrUpstreamProtocol)
}

func (l *upstreamLogin) send(msg pgproto3.FrontendMessage) error {
	buf, err := msg.Encode(nil)
	if err != nil {
		return fmt.Errorf("encode %T: %w", msg, err)
	}
	if _, err := l.w.Write(buf); err != nil {
		return fmt.Errorf("send %T upstream: %w", msg, err)
	}
	return nil
}

// authMethodName names an authentication request code as the protocol documentation does.
func authMethodName(code uint32) string {
	switch code {
	case 2:
		return "KerberosV5"
	case pgproto3.AuthTypeSCMCreds:
		return "SCMCredential"
	case pgproto3.AuthTypeGSS, pgproto3.AuthTypeGSSCont:
		return "GSSAPI"
	case pgproto3.AuthTypeSSPI:
		return "SSPI"
	}
	return fmt.Sprintf("with code %d", code)
}
