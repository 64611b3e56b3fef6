package pgauth

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/knoxcall/dbproxy/internal/handshake"
)

// Limits and request codes of the packets a client sends before the regular message flow,
// from PostgreSQL's src/include/libpq/pqcomm.h.
const (
	// maxStartupPacketLength is MAX_STARTUP_PACKET_LENGTH: the largest packet body, the
	// length word excluded, that the server accepts before authentication.
	maxStartupPacketLength = 10000
	// minStartupPacketLength is the body of the shortest packet: a protocol version or a
	// request code alone.
	minStartupPacketLength = 4

	sslRequestCode    = 80877103 // NEGOTIATE_SSL_CODE, 1234.5679
	gssEncRequestCode = 80877104 // NEGOTIATE_GSS_CODE, 1234.5680
	cancelRequestCode = 80877102 // CANCEL_REQUEST_CODE, 1234.5678

	// protocolMajor is the only major protocol version spoken since PostgreSQL 14 dropped 2.0.
	protocolMajor = 3

	// cancelKeyMax is the longest cancel key of protocol 3.2 (256 bytes, per the
	// BackendKeyData description in the protocol documentation of PostgreSQL 18).
	cancelKeyMax = 256
	// cancelKeyMin is the 4-byte key of protocol 3.0.
	cancelKeyMin = 4

	// maxEncryptionRequests bounds the SSLRequest and GSSENCRequest packets that may precede
	// the StartupMessage. libpq sends at most one of each, and PostgreSQL accepts at most one
	// of each. The agent tolerates a few more for clients that retry, but a looping client
	// still ends.
	maxEncryptionRequests = 8
)

// packetKind is the type of the packet that opened a client connection.
type packetKind int

const (
	packetStartup packetKind = iota
	packetSSLRequest
	packetGSSEncRequest
	packetCancelRequest
)

func (k packetKind) String() string {
	switch k {
	case packetStartup:
		return "StartupMessage"
	case packetSSLRequest:
		return "SSLRequest"
	case packetGSSEncRequest:
		return "GSSENCRequest"
	case packetCancelRequest:
		return "CancelRequest"
	}
	return "unknown packet"
}

// startupParam is one name-value pair of a StartupMessage. A slice keeps the client's order.
type startupParam struct {
	Name, Value string
}

// startupPacket is one packet read before the regular message flow.
type startupPacket struct {
	Kind packetKind
	// Raw is the whole packet, length word included. A CancelRequest is forwarded as Raw.
	Raw []byte
	// Version is the protocol version of a StartupMessage (major in the high 16 bits).
	Version uint32
	// Params are the parameters of a StartupMessage in the client's order.
	Params []startupParam
}

// protocolError is a client packet that the agent rejects. Code is the SQLSTATE sent to the
// client in the ErrorResponse.
type protocolError struct {
	Code string
	Msg  string
}

func (e *protocolError) Error() string { return e.Msg }

func (e *protocolError) Unwrap() error { return handshake.ErrClientProtocol }

func clientProtocolError(format string, args ...any) error {
	return &protocolError{Code: codeProtocolViolation, Msg: fmt.Sprintf(format, args...)}
}

// readStartupPacket reads one packet of the connection's opening phase: a StartupMessage,
// SSLRequest, GSSENCRequest or CancelRequest. Bytes after the packet stay in r.
func readStartupPacket(r *bufio.Reader) (startupPacket, error) {
	var header [4]byte
	if _, err := io.ReadFull(r, header[:]); err != nil {
		return startupPacket{}, err
	}
	length := int64(int32(binary.BigEndian.Uint32(header[:]))) - 4
	if length < minStartupPacketLength || length > maxStartupPacketLength {
		return startupPacket{}, clientProtocolError("invalid length of startup packet: %d", length+4)
	}
	raw := make([]byte, 4+length)
	copy(raw, header[:])
	if _, err := io.ReadFull(r, raw[4:]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return startupPacket{}, err
	}
	return parseStartupPacket(raw)
}

// parseStartupPacket classifies a packet whose length word has been checked.
func parseStartupPacket(raw []byte) (startupPacket, error) {
	body := raw[4:]
	code := binary.BigEndian.Uint32(body)
	p := startupPacket{Raw: raw}
	switch code {
	case sslRequestCode, gssEncRequestCode:
		if len(body) != 4 {
			return p, clientProtocolError("invalid length of encryption request: %d", len(raw))
		}
		p.Kind = packetSSLRequest
		if code == gssEncRequestCode {
			p.Kind = packetGSSEncRequest
		}
		return p, nil
	case cancelRequestCode:
		keyLen := len(body) - 8
		if keyLen < cancelKeyMin || keyLen > cancelKeyMax {
			return p, clientProtocolError("invalid length of cancel request: %d", len(raw))
		}
		p.Kind = packetCancelRequest
		return p, nil
	}

	p.Kind = packetStartup
	p.Version = code
	if major := code >> 16; major != protocolMajor {
		return p, &protocolError{
			Code: codeFeatureNotSupported,
			Msg: fmt.Sprintf("unsupported frontend protocol %d.%d: the agent supports 3.0 to 3.2",
				major, code&0xffff),
		}
	}
	params, err := parseStartupParams(body[4:])
	if err != nil {
		return p, err
	}
	p.Params = params
	return p, nil
}

// parseStartupParams splits the NUL-terminated name-value pairs of a StartupMessage. The
// list ends with an empty name, which must be the packet's last byte, as PostgreSQL requires.
func parseStartupParams(b []byte) ([]startupParam, error) {
	var params []startupParam
	for {
		name, rest, ok := cutCString(b)
		if !ok {
			return nil, clientProtocolError("invalid startup packet layout: missing terminator")
		}
		if name == "" {
			if len(rest) != 0 {
				return nil, clientProtocolError("invalid startup packet layout: expected terminator as last byte")
			}
			return params, nil
		}
		value, rest2, ok := cutCString(rest)
		if !ok {
			return nil, clientProtocolError("invalid startup packet layout: parameter %q has no value", name)
		}
		params = append(params, startupParam{Name: name, Value: value})
		b = rest2
	}
}

func cutCString(b []byte) (s string, rest []byte, ok bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return "", nil, false
	}
	return string(b[:i]), b[i+1:], true
}

// readClientStartup replies 'N' to every SSLRequest and GSSENCRequest and returns the
// StartupMessage or CancelRequest that follows.
func readClientStartup(r *bufio.Reader, w io.Writer) (startupPacket, error) {
	declined := packetKind(-1) // the last encryption request that got the reply 'N'
	for range maxEncryptionRequests + 1 {
		p, err := readStartupPacket(r)
		if err == io.EOF && declined >= 0 {
			return p, &declinedError{request: declined}
		}
		if err != nil {
			return p, err
		}
		if p.Kind == packetStartup || p.Kind == packetCancelRequest {
			return p, nil
		}
		// The agent's listener is loopback only and speaks plaintext to the client; the
		// upstream leg has its own TLS.
		if _, err := w.Write([]byte{'N'}); err != nil {
			return p, fmt.Errorf("reply to %s: %w", p.Kind, err)
		}
		declined = p.Kind
	}
	return startupPacket{}, clientProtocolError("more than %d SSLRequest and GSSENCRequest packets", maxEncryptionRequests)
}

// declinedError is the end of the client's stream right after the agent declined its
// encryption request. It wraps io.EOF and handshake.ErrEncryptionDeclined.
type declinedError struct {
	request packetKind
}

func (e *declinedError) Error() string {
	return fmt.Sprintf("EOF after the agent declined its %s: %s", e.request, encryptionHint(e.request))
}

func (e *declinedError) Unwrap() []error {
	return []error{io.EOF, handshake.ErrEncryptionDeclined}
}

// encryptionHint names the likely cause when a client closes its connection right after
// the agent declined its encryption request. libpq does so when the connection requires
// encryption. pgx with sslmode=prefer, its default, does so too and then reconnects
// without TLS.
func encryptionHint(declined packetKind) string {
	if declined == packetGSSEncRequest {
		return "a client that requires GSSAPI encryption (gssencmode=require) closes here, " +
			"and the agent's loopback listener is plaintext, so use gssencmode=disable or prefer"
	}
	return "a client that requires TLS (sslmode=require or stricter) closes here, " +
		"and the agent's loopback listener is plaintext, so use sslmode=disable or prefer " +
		"(pgx with sslmode=prefer also closes here, then reconnects without TLS)"
}

// upstreamStartupMessage builds the StartupMessage sent upstream: the client's protocol
// version and parameters, with user replaced by the stored user name. A missing database
// defaults to that user name, as libpq and the server do.
func upstreamStartupMessage(client startupPacket, user string) ([]byte, error) {
	if user == "" {
		return nil, errors.New("stored credentials have an empty user name")
	}
	if strings.IndexByte(user, 0) >= 0 {
		// A NUL would end the value early and start a parameter of the secret's choosing.
		return nil, errors.New("stored user name contains a NUL byte")
	}
	msg := binary.BigEndian.AppendUint32(make([]byte, 4, 64), client.Version)
	msg = appendParam(msg, "user", user)
	hasDatabase := false
	for _, p := range client.Params {
		switch p.Name {
		case "user":
			continue
		case "database":
			if p.Value == "" {
				continue
			}
			hasDatabase = true
		}
		msg = appendParam(msg, p.Name, p.Value)
	}
	if !hasDatabase {
		msg = appendParam(msg, "database", user)
	}
	msg = append(msg, 0)
	if len(msg)-4 > maxStartupPacketLength {
		return nil, clientProtocolError("startup packet for the upstream exceeds %d bytes", maxStartupPacketLength)
	}
	binary.BigEndian.PutUint32(msg, uint32(len(msg)))
	return msg, nil
}

func appendParam(b []byte, name, value string) []byte {
	b = append(b, name...)
	b = append(b, 0)
	b = append(b, value...)
	return append(b, 0)
}

// sslRequest is the 8-byte SSLRequest packet: length 8, code 1234.5679.
var sslRequest = binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 8), sslRequestCode)
