package myauth

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/go-mysql-org/go-mysql/mysql"
)

// Length limits for the packets of the login phase. go-mysql's packet.Conn has no length
// limit and reads ahead through its own buffer, so the login packets are framed here.
const (
	// maxGreetingLen bounds the server's Handshake v10. Its fixed fields take 46 bytes plus
	// the server version and plugin name; MariaDB 10.11 sends about 110 bytes.
	maxGreetingLen = 4 << 10
	// maxResponseLen bounds the client's HandshakeResponse41: MySQL 8 rejects connection
	// attributes of more than 64 KiB, and the other fields need far less than another 64 KiB.
	maxResponseLen = 128 << 10
	// maxServerPacketLen bounds the server's packets after the greeting (AuthSwitchRequest,
	// AuthMoreData with an RSA public key, OK with session state, ERR).
	// NOTE: an estimate. An OK tracking every system variable could exceed it.
	maxServerPacketLen = 1 << 20
	// packetHeaderLen is the 3-byte payload length plus the 1-byte sequence id.
	packetHeaderLen = 4
	// maxPayloadLen (0xffffff) marks a payload continued in the next packet; no login
	// packet is that long.
	maxPayloadLen = 1<<24 - 1
)

var errPacketTooLong = errors.New("packet too long")

// readPacket reads one packet and returns its sequence id and payload, rejecting a payload
// longer than limit. It reads exactly one packet, so nothing is read ahead.
func readPacket(r io.Reader, limit int) (seq byte, payload []byte, err error) {
	var header [packetHeaderLen]byte
	if _, err := io.ReadFull(r, header[:]); err != nil {
		return 0, nil, err
	}
	return readPayload(r, header, limit)
}

// readPayload reads the payload that header announces.
func readPayload(r io.Reader, header [packetHeaderLen]byte, limit int) (seq byte, payload []byte, err error) {
	n := int(header[0]) | int(header[1])<<8 | int(header[2])<<16
	if n > limit {
		return header[3], nil, fmt.Errorf("%w: %d bytes, limit %d", errPacketTooLong, n, limit)
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return header[3], nil, unexpectedEOF(err)
	}
	return header[3], payload, nil
}

// writePacket writes payload as one packet with sequence id seq.
func writePacket(w io.Writer, seq byte, payload []byte) error {
	if len(payload) >= maxPayloadLen {
		return fmt.Errorf("%w: %d bytes", errPacketTooLong, len(payload))
	}
	buf := make([]byte, packetHeaderLen, packetHeaderLen+len(payload))
	buf[0], buf[1], buf[2], buf[3] = byte(len(payload)), byte(len(payload)>>8), byte(len(payload)>>16), seq
	_, err := w.Write(append(buf, payload...))
	return err
}

// upstreamReadError marks a packet from the upstream that is longer than its limit as an
// upstream protocol error. Other read errors are returned unchanged.
func upstreamReadError(err error) error {
	if errors.Is(err, errPacketTooLong) {
		return fmt.Errorf("%w: %w", ErrUpstreamProtocol, err)
	}
	return err
}

func unexpectedEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// ServerError is an ERR packet that the upstream sent during login. The client receives the
// packet itself; Handshake returns this type so that callers can read the code.
type ServerError struct {
	Code    uint16
	State   string // SQLSTATE, empty when the packet has none
	Message string
}

func (e *ServerError) Error() string {
	return fmt.Sprintf("server error %d (%s): %s", e.Code, e.State, e.Message)
}

// parseErrPacket decodes an ERR packet payload (0xff, code, "#" SQLSTATE, message).
func parseErrPacket(p []byte) *ServerError {
	e := &ServerError{}
	if len(p) < 3 {
		e.Message = "malformed ERR packet"
		return e
	}
	e.Code = binary.LittleEndian.Uint16(p[1:3])
	rest := p[3:]
	if len(rest) >= 6 && rest[0] == '#' {
		e.State, rest = string(rest[1:6]), rest[6:]
	}
	e.Message = string(rest)
	return e
}

// maxErrMessageLen is MySQL's MYSQL_ERRMSG_SIZE (512) less room for the terminating NUL;
// clients truncate longer messages.
const maxErrMessageLen = 511

// errPacket encodes an ERR packet payload. Clients without CLIENT_PROTOCOL_41 get no
// SQLSTATE.
func errPacket(code uint16, state, message string, protocol41 bool) []byte {
	if len(message) > maxErrMessageLen {
		message = message[:maxErrMessageLen]
	}
	p := []byte{mysql.ERR_HEADER, byte(code), byte(code >> 8)}
	if protocol41 {
		p = append(p, '#')
		p = append(p, state...)
	}
	return append(p, message...)
}
