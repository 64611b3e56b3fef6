package myauth

import (
	"bytes"
	"io"
	"net"
	"testing"

	"github.com/go-mysql-org/go-mysql/mysql"
)

// FuzzParseResponse checks that any HandshakeResponse41 or 320 payload parses without panic,
// and that a parsed HandshakeResponse41 re-encodes to a packet that parses to the same fields.
func FuzzParseResponse(f *testing.F) {
	caps := mysql.CLIENT_PROTOCOL_41 | mysql.CLIENT_SECURE_CONNECTION | mysql.CLIENT_PLUGIN_AUTH |
		mysql.CLIENT_CONNECT_WITH_DB | mysql.CLIENT_CONNECT_ATTRS | mysql.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA |
		mysql.CLIENT_ZSTD_COMPRESSION_ALGORITHM
	seed := &response{capabilities: caps, maxPacketSize: 1 << 24, charset: 45, database: "appdb",
		attributes: []byte("\x0c_client_name\x0fGo-MySQL-Driver"), zstdLevel: 3}
	f.Add(seed.marshal("app", []byte("0123456789abcdefghij"), "caching_sha2_password", false))
	f.Add(seed.marshal("", nil, "", true))
	f.Add([]byte{0x05, 0x00, 0xff, 0xff, 0xff, 'a', 'p', 'p', 0})
	f.Fuzz(func(t *testing.T, p []byte) {
		resp, err := parseResponse(p)
		if err != nil || resp.sslRequest || resp.capabilities&mysql.CLIENT_PROTOCOL_41 == 0 {
			return
		}
		if resp.capabilities&(mysql.CLIENT_SECURE_CONNECTION|mysql.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA) == 0 ||
			len(resp.authResponse) > 250 || bytes.IndexByte([]byte(resp.user+resp.database+resp.authPlugin), 0) >= 0 {
			return // not representable in the encoding marshal uses
		}
		resp.capabilities |= mysql.CLIENT_CONNECT_WITH_DB | mysql.CLIENT_PLUGIN_AUTH
		again, err := parseResponse(resp.marshal(resp.user, resp.authResponse, resp.authPlugin, false))
		if err != nil {
			t.Fatalf("re-encoded response does not parse: %v", err)
		}
		if again.user != resp.user || !bytes.Equal(again.authResponse, resp.authResponse) ||
			again.database != resp.database || !bytes.Equal(again.attributes, resp.attributes) {
			t.Fatalf("round trip changed the response: %+v to %+v", resp, again)
		}
	})
}

// FuzzParseGreeting checks that any greeting payload parses without panic, and that a parsed
// greeting re-encodes to one with the same fields.
func FuzzParseGreeting(f *testing.F) {
	f.Add(fakeGreeting(fakeCaps, mysql.AUTH_NATIVE_PASSWORD))
	f.Add(fakeGreeting(fakeCaps&^mysql.CLIENT_LONG_PASSWORD, "client_ed25519"))
	f.Add([]byte{10, '5', 0, 1, 2, 3, 4, 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 0, 0xff, 0xf7})
	f.Fuzz(func(t *testing.T, p []byte) {
		g, err := parseGreeting(p)
		if err != nil || len(g.scramble) != scrambleLen || g.capabilities&mysql.CLIENT_PLUGIN_AUTH == 0 ||
			bytes.IndexByte([]byte(g.serverVersion+g.authPlugin), 0) >= 0 || bytes.IndexByte(g.scramble, 0) >= 0 {
			return
		}
		g.capabilities |= mysql.CLIENT_SECURE_CONNECTION
		again, err := parseGreeting(g.marshal(g.capabilities, g.scramble))
		if err != nil {
			t.Fatalf("re-encoded greeting does not parse: %v", err)
		}
		if again.serverVersion != g.serverVersion || again.authPlugin != g.authPlugin ||
			!bytes.Equal(again.scramble, g.scramble) || again.capabilities != g.capabilities {
			t.Fatalf("round trip changed the greeting: %+v to %+v", g, again)
		}
	})
}

// FuzzClientStream feeds the command-boundary parser arbitrary client bytes in chunks of
// arbitrary size. It must not panic, never adds bytes, and passes a stream without any
// COM_CHANGE_USER byte (0x11) through unchanged.
func FuzzClientStream(f *testing.F) {
	f.Add(rawPacket(0, []byte("\x03SELECT 1")), uint8(3))
	f.Add(append(rawPacket(0, []byte("\x03LOAD DATA LOCAL INFILE 'x' INTO TABLE t")),
		append(rawPacket(2, []byte("1\ta\n")), rawPacket(3, nil)...)...), uint8(7))
	f.Add(append(rawPacket(0, []byte("\x11app\x00\x00")), rawPacket(0, []byte{0x0e})...), uint8(1))
	f.Fuzz(func(t *testing.T, stream []byte, chunk uint8) {
		in := &chunkConn{data: stream, chunk: int(chunk%64) + 1}
		c := newClientConn(in, 0, "fuzz")
		var out bytes.Buffer
		buf := make([]byte, 7)
		for {
			n, err := c.Read(buf)
			out.Write(buf[:n])
			if err != nil {
				break
			}
		}
		if out.Len() > len(stream) {
			t.Fatalf("parser output %d bytes from %d", out.Len(), len(stream))
		}
		if bytes.IndexByte(stream, 0x11) < 0 && !bytes.Equal(out.Bytes(), stream) {
			t.Fatalf("stream without COM_CHANGE_USER changed:\n in %x\nout %x", stream, out.Bytes())
		}
	})
}

// chunkConn is a net.Conn that returns data in reads of at most chunk bytes and discards
// writes.
type chunkConn struct {
	net.Conn
	data  []byte
	chunk int
}

func (c *chunkConn) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), c.chunk)], c.data)
	c.data = c.data[n:]
	return n, nil
}

func (c *chunkConn) Write(p []byte) (int, error) { return len(p), nil }
