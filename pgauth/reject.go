package pgauth

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/knoxcall/dbproxy/internal/handshake"
)

// SQLSTATE codes of the errors the agent itself sends, from PostgreSQL's errcodes.txt.
const (
	codeUnableToConnect     = "08001" // sqlclient_unable_to_establish_sqlconnection
	codeConnectionFailure   = "08006" // connection_failure
	codeProtocolViolation   = "08P01" // protocol_violation
	codeFeatureNotSupported = "0A000" // feature_not_supported
	codeInvalidAuthSpec     = "28000" // invalid_authorization_specification
	codeInvalidPassword     = "28P01" // invalid_password
	codeTooManyConnections  = "53300" // too_many_connections
)

// errorWriteTimeout bounds the write of a final ErrorResponse to the client once the login
// context has ended. The message is a few hundred bytes, so only a client that stopped
// reading can take this long.
const errorWriteTimeout = time.Second

// clientReadBufferSize is the buffer over the client connection while its opening packets
// are read. It holds a StartupMessage of the maximum length.
const clientReadBufferSize = 16 << 10

// Reject informs a PostgreSQL client that the agent could not set up its session. It replies
// 'N' to the client's SSLRequest and GSSENCRequest packets, reads its StartupMessage and
// sends a FATAL ErrorResponse naming route and the failure. The SQLSTATE is 08001 when the
// upstream could not be reached, 08006 when its TLS handshake or certificate check failed,
// 53300 when the route is at its connection limit (handshake.ErrTooManyConnections), and
// 28000 for everything else, credential-source failures included. A CancelRequest gets
// no reply. Reject does not close client.
//
// cause must not contain a secret, because its text is sent to the client. The
// credsource.Source contract keeps secret values out of a source's errors.
func Reject(ctx context.Context, client net.Conn, route string, cause error) error {
	stop := watchContext(ctx, client)
	defer stop()

	r := bufio.NewReaderSize(client, clientReadBufferSize)
	p, err := readClientStartup(r, client)
	if err != nil {
		var perr *protocolError
		if !errors.As(err, &perr) {
			return handshake.ClientReadError(ctx, fmt.Errorf("read client startup: %w", err))
		}
		// A malformed packet still gets the reason the session cannot start.
	} else if p.Kind == packetCancelRequest {
		return nil
	}

	msg := &pgproto3.ErrorResponse{
		Code:    rejectCode(cause),
		Message: fmt.Sprintf("dbproxy route %q: %s", route, handshake.ClientErrorText(context.Background(), cause)),
	}
	if err := sendFatal(ctx, client, msg, stop); err != nil {
		return fmt.Errorf("send error response: %w", err)
	}
	return nil
}

// rejectCode picks the SQLSTATE for a failure that kept the session from starting.
func rejectCode(cause error) string {
	switch {
	case errors.Is(cause, handshake.ErrTooManyConnections):
		return codeTooManyConnections
	case isTLSError(cause):
		return codeConnectionFailure
	case isNetError(cause):
		return codeUnableToConnect
	}
	return codeInvalidAuthSpec
}

// handshakeCode picks the SQLSTATE for a failure of the agent during a Handshake, after the
// upstream connection was dialed.
func handshakeCode(err error) string {
	var perr *protocolError
	switch {
	case errors.As(err, &perr):
		return perr.Code
	case isTLSError(err):
		return codeConnectionFailure
	case errors.Is(err, handshake.ErrUpstreamProtocol):
		return codeProtocolViolation
	case errors.Is(err, handshake.ErrAuthFailed):
		return codeInvalidAuthSpec
	}
	return codeConnectionFailure
}

func isTLSError(err error) bool {
	var (
		verifyErr    *tls.CertificateVerificationError
		alertErr     tls.AlertError
		recordErr    tls.RecordHeaderError
		hostErr      x509.HostnameError
		authorityErr x509.UnknownAuthorityError
		invalidErr   x509.CertificateInvalidError
	)
	return errors.As(err, &verifyErr) || errors.As(err, &alertErr) || errors.As(err, &recordErr) ||
		errors.As(err, &hostErr) || errors.As(err, &authorityErr) || errors.As(err, &invalidErr) ||
		errors.Is(err, errTLSDeclined)
}

func isNetError(err error) bool {
	var (
		opErr   *net.OpError
		dnsErr  *net.DNSError
		addrErr *net.AddrError
	)
	return errors.As(err, &opErr) || errors.As(err, &dnsErr) || errors.As(err, &addrErr) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// sendFatal writes msg as a FATAL ErrorResponse. When ctx has ended, the context watch is
// stopped first and the write gets its own short deadline, so a timed-out login still
// tells the client why.
func sendFatal(ctx context.Context, client net.Conn, msg *pgproto3.ErrorResponse, stopWatch func()) error {
	msg.Severity = "FATAL"
	msg.SeverityUnlocalized = "FATAL"
	buf, err := msg.Encode(nil)
	if err != nil {
		return err
	}
	return writeFinal(ctx, client, buf, stopWatch)
}

// writeFinal writes the last bytes a failed login sends to the client.
func writeFinal(ctx context.Context, client net.Conn, buf []byte, stopWatch func()) error {
	if ctx.Err() != nil {
		stopWatch()
		client.SetWriteDeadline(time.Now().Add(errorWriteTimeout))
	}
	_, err := client.Write(buf)
	return err
}

// watchContext is handshake.WatchContext with a stop function that, when ctx has already
// ended, waits for the deadline change to finish, so no deadline is set after stop returns.
func watchContext(ctx context.Context, conns ...net.Conn) (stop func()) {
	done := make(chan struct{})
	cancelWatch := context.AfterFunc(ctx, func() {
		defer close(done)
		past := time.Unix(1, 0)
		for _, c := range conns {
			c.SetDeadline(past)
		}
	})
	var once sync.Once
	return func() {
		once.Do(func() {
			if !cancelWatch() {
				<-done
			}
		})
	}
}
