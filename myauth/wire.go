package myauth

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/go-mysql-org/go-mysql/mysql"
)

// protocolVersion10 is the only greeting version that MySQL 4.1 and later, and every
// MariaDB, send.
const protocolVersion10 = 10

// scrambleLen is the length of the auth-plugin-data that MySQL and MariaDB servers send.
const scrambleLen = 20

// greeting is the server's Handshake v10 (Protocol::HandshakeV10).
type greeting struct {
	serverVersion string
	connectionID  uint32
	capabilities  uint32
	charset       byte
	status        uint16
	// extCapabilities are MariaDB's extended capabilities, sent in the last 4 reserved bytes
	// when the server clears CLIENT_LONG_PASSWORD (MariaDB calls that bit CLIENT_MYSQL).
	extCapabilities uint32
	scramble        []byte
	authPlugin      string
}

var errMalformed = errors.New("malformed packet")

// parseGreeting decodes a Handshake v10 payload. The caller has checked that it is not an
// ERR packet.
func parseGreeting(p []byte) (*greeting, error) {
	r := reader{b: p}
	if v := r.byte(); v != protocolVersion10 {
		return nil, fmt.Errorf("%w: greeting protocol version %d, want %d", errMalformed, v, protocolVersion10)
	}
	g := &greeting{serverVersion: r.nulString(), connectionID: r.uint32()}
	scramble := r.bytes(8)
	r.skip(1)
	g.capabilities = uint32(r.uint16())

	if r.err != nil {
		return nil, fmt.Errorf("%w: greeting: %v", errMalformed, r.err)
	}
	if r.empty() {
		// A pre-4.1 greeting ends here; the CLIENT_PROTOCOL_41 check rejects it.
		g.scramble = scramble
		return g, nil
	}

	g.charset = r.byte()
	g.status = r.uint16()
	g.capabilities |= uint32(r.uint16()) << 16
	authDataLen := int(r.byte())
	reserved := r.bytes(10)
	if g.capabilities&mysql.CLIENT_LONG_PASSWORD == 0 && r.err == nil {
		g.extCapabilities = binary.LittleEndian.Uint32(reserved[6:])
	}
	if g.capabilities&mysql.CLIENT_SECURE_CONNECTION != 0 {
		// Part 2 is max(13, authDataLen-8) bytes including a trailing NUL.
		scramble = append(scramble, r.bytes(max(13, authDataLen-8))...)
		scramble = bytes.TrimSuffix(scramble, []byte{0})
	}
	g.scramble = scramble

	if g.capabilities&mysql.CLIENT_PLUGIN_AUTH != 0 {
		// Some MySQL 5.5 servers omit the NUL after the plugin name, so take the rest.
		g.authPlugin = string(bytes.TrimSuffix(r.rest(), []byte{0}))
	}
	if r.err != nil {
		return nil, fmt.Errorf("%w: greeting: %v", errMalformed, r.err)
	}
	return g, nil
}

// marshal encodes the greeting with the given capabilities and scramble in place of the
// server's own.
func (g *greeting) marshal(capabilities uint32, scramble []byte) []byte {
	p := []byte{protocolVersion10}
	p = append(p, g.serverVersion...)
	p = append(p, 0)
	p = binary.LittleEndian.AppendUint32(p, g.connectionID)
	p = append(p, scramble[:8]...)
	p = append(p, 0)
	p = binary.LittleEndian.AppendUint16(p, uint16(capabilities))
	p = append(p, g.charset)
	p = binary.LittleEndian.AppendUint16(p, g.status)
	p = binary.LittleEndian.AppendUint16(p, uint16(capabilities>>16))
	p = append(p, byte(len(scramble)+1))
	p = append(p, make([]byte, 6)...)
	if capabilities&mysql.CLIENT_LONG_PASSWORD == 0 {
		p = binary.LittleEndian.AppendUint32(p, g.extCapabilities)
	} else {
		p = append(p, 0, 0, 0, 0)
	}
	p = append(p, scramble[8:]...)
	p = append(p, 0)
	if capabilities&mysql.CLIENT_PLUGIN_AUTH != 0 {
		p = append(p, g.authPlugin...)
		p = append(p, 0)
	}
	return p
}

// newScramble returns scrambleLen random printable ASCII bytes. The agent ignores what the
// client computes from it, but drivers expect a fresh value of the usual form.
func newScramble() []byte {
	b := make([]byte, scrambleLen)
	rand.Read(b)
	for i := range b {
		b[i] = '!' + b[i]%94
	}
	return b
}

// response is the client's HandshakeResponse41 (or HandshakeResponse320), or an SSLRequest.
type response struct {
	capabilities    uint32
	extCapabilities uint32 // MariaDB, see greeting.extCapabilities
	maxPacketSize   uint32
	charset         byte
	user            string
	authResponse    []byte
	database        string
	authPlugin      string
	// attributes is the connection attribute block without its length prefix.
	attributes []byte
	zstdLevel  byte
	sslRequest bool
}

// sslRequestLen is the payload length of Protocol::SSLRequest: capabilities, max packet size,
// character set and 23 reserved bytes.
const sslRequestLen = 32

// parseResponse decodes a HandshakeResponse41 or HandshakeResponse320 payload. Optional
// fields missing at the end count as empty, as MySQL servers accept.
func parseResponse(p []byte) (*response, error) {
	r := reader{b: p}
	resp := &response{capabilities: uint32(r.uint16())}
	if r.err != nil {
		return nil, fmt.Errorf("%w: handshake response: %v", errMalformed, r.err)
	}
	if resp.capabilities&mysql.CLIENT_PROTOCOL_41 == 0 {
		// HandshakeResponse320: 3-byte max packet size, user, then the auth response.
		resp.maxPacketSize = uint32(r.uint16()) | uint32(r.byte())<<16
		resp.user = r.nulString()
		if r.err != nil {
			return nil, fmt.Errorf("%w: handshake response 320: %v", errMalformed, r.err)
		}
		resp.authResponse = r.rest()
		return resp, nil
	}

	resp.capabilities |= uint32(r.uint16()) << 16
	resp.maxPacketSize = r.uint32()
	resp.charset = r.byte()
	reserved := r.bytes(23)
	if r.err != nil {
		return nil, fmt.Errorf("%w: handshake response: %v", errMalformed, r.err)
	}
	if resp.capabilities&mysql.CLIENT_LONG_PASSWORD == 0 {
		resp.extCapabilities = binary.LittleEndian.Uint32(reserved[19:])
	}
	if len(p) == sslRequestLen && resp.capabilities&mysql.CLIENT_SSL != 0 {
		resp.sslRequest = true
		return resp, nil
	}

	resp.user = r.nulString()
	switch {
	case resp.capabilities&mysql.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0:
		resp.authResponse = r.bytes(int(r.lenencInt()))
	case resp.capabilities&mysql.CLIENT_SECURE_CONNECTION != 0:
		resp.authResponse = r.bytes(int(r.byte()))
	default:
		resp.authResponse = []byte(r.nulString())
	}

	// The optional trailing fields.
	if resp.capabilities&mysql.CLIENT_CONNECT_WITH_DB != 0 && !r.empty() {
		resp.database = r.nulString()
	}
	if resp.capabilities&mysql.CLIENT_PLUGIN_AUTH != 0 && !r.empty() {
		resp.authPlugin = r.nulStringOrRest()
	}
	if resp.capabilities&mysql.CLIENT_CONNECT_ATTRS != 0 && !r.empty() {
		resp.attributes = r.bytes(int(r.lenencInt()))
	}
	if resp.capabilities&mysql.CLIENT_ZSTD_COMPRESSION_ALGORITHM != 0 && !r.empty() {
		resp.zstdLevel = r.byte()
	}
	if r.err != nil {
		return nil, fmt.Errorf("%w: handshake response: %v", errMalformed, r.err)
	}
	return resp, nil
}

// marshal encodes a HandshakeResponse41 with the given user, auth response and plugin, and
// the rest of the fields from resp. With sslRequest it encodes only the SSLRequest prefix.
func (resp *response) marshal(user string, authResponse []byte, authPlugin string, sslRequest bool) []byte {
	caps := resp.capabilities
	p := binary.LittleEndian.AppendUint32(nil, caps)
	p = binary.LittleEndian.AppendUint32(p, resp.maxPacketSize)
	p = append(p, resp.charset)
	p = append(p, make([]byte, 19)...)
	if caps&mysql.CLIENT_LONG_PASSWORD == 0 {
		p = binary.LittleEndian.AppendUint32(p, resp.extCapabilities)
	} else {
		p = append(p, 0, 0, 0, 0)
	}
	if sslRequest {
		return p
	}

	p = append(p, user...)
	p = append(p, 0)
	if caps&mysql.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
		p = mysql.AppendLengthEncodedInteger(p, uint64(len(authResponse)))
	} else {
		p = append(p, byte(len(authResponse)))
	}
	p = append(p, authResponse...)

	if caps&mysql.CLIENT_CONNECT_WITH_DB != 0 {
		p = append(p, resp.database...)
		p = append(p, 0)
	}
	p = append(p, authPlugin...)
	p = append(p, 0)
	if caps&mysql.CLIENT_CONNECT_ATTRS != 0 {
		p = mysql.AppendLengthEncodedInteger(p, uint64(len(resp.attributes)))
		p = append(p, resp.attributes...)
	}
	if caps&mysql.CLIENT_ZSTD_COMPRESSION_ALGORITHM != 0 {
		p = append(p, resp.zstdLevel)
	}
	return p
}

// reader decodes little-endian protocol fields. The first out-of-bounds read sets err, and
// every later read returns zero values, so a parser checks err once per group of fields.
type reader struct {
	b   []byte
	err error
}

var errShort = errors.New("packet ends early")

func (r *reader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.b) {
		r.err = errShort
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) empty() bool { return r.err == nil && len(r.b) == 0 }
func (r *reader) skip(n int)  { r.take(n) }

func (r *reader) byte() byte {
	if v := r.take(1); v != nil {
		return v[0]
	}
	return 0
}

func (r *reader) uint16() uint16 {
	if v := r.take(2); v != nil {
		return binary.LittleEndian.Uint16(v)
	}
	return 0
}

func (r *reader) uint32() uint32 {
	if v := r.take(4); v != nil {
		return binary.LittleEndian.Uint32(v)
	}
	return 0
}

// bytes returns a copy of the next n bytes.
func (r *reader) bytes(n int) []byte {
	return bytes.Clone(r.take(n))
}

func (r *reader) rest() []byte { return r.bytes(len(r.b)) }

func (r *reader) nulString() string {
	if r.err != nil {
		return ""
	}
	i := bytes.IndexByte(r.b, 0)
	if i < 0 {
		r.err = errors.New("string without NUL terminator")
		return ""
	}
	s := string(r.b[:i])
	r.b = r.b[i+1:]
	return s
}

// nulStringOrRest reads a NUL-terminated string, or the rest of the packet when the NUL is
// missing (some clients end the packet with the plugin name).
func (r *reader) nulStringOrRest() string {
	if r.err == nil && bytes.IndexByte(r.b, 0) < 0 {
		return string(r.rest())
	}
	return r.nulString()
}

// lenencInt reads a length-encoded integer. Lengths that do not fit in the packet fail the
// next take, so a huge value cannot make a parser allocate.
func (r *reader) lenencInt() uint64 {
	if r.err != nil {
		return 0
	}
	// go-mysql's LengthEncodedInt indexes past a short buffer, so check the size first.
	if len(r.b) == 0 || len(r.b) < lenencSize(r.b[0]) {
		r.err = errShort
		return 0
	}
	n, isNull, size := mysql.LengthEncodedInt(r.b)
	if isNull || size == 0 || size > len(r.b) {
		r.err = errors.New("invalid length-encoded integer")
		return 0
	}
	r.b = r.b[size:]
	if n > uint64(len(r.b)) {
		r.err = errShort
		return 0
	}
	return n
}

// lenencSize returns how many bytes a length-encoded integer with this first byte takes.
func lenencSize(first byte) int {
	switch first {
	case 0xfc:
		return 3
	case 0xfd:
		return 4
	case 0xfe:
		return 9
	}
	return 1
}
