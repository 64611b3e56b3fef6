package myauth

import (
	"fmt"
	"net"
	"sync"

	"github.com/go-mysql-org/go-mysql/mysql"

	"github.com/knoxcall/dbproxy/internal/handshake"
)

// codeChangeUser is the code of the ERR sent in reply to COM_CHANGE_USER: ER_NOT_SUPPORTED_YET
// (1235, SQLSTATE 42000).
const (
	codeChangeUser  = mysql.ER_NOT_SUPPORTED_YET
	stateChangeUser = "42000"
)

// readBufferSize is the size of the buffer that clientConn reads the client's stream into.
const readBufferSize = 16 << 10

// States of the command-boundary parser.
const (
	stateIdle    = iota // the next packet must start a command (sequence id 0)
	stateCommand        // after a command: the next packet is a command or LOAD DATA content
	stateInfile         // inside LOAD DATA LOCAL INFILE content, which an empty packet ends
)

// clientConn is the client connection handed to the splice. On an uncompressed session it
// follows the packet headers of the client's stream to find command boundaries. It replies to
// COM_CHANGE_USER with an ERR instead of forwarding it, because the server would
// re-authenticate with the client's credentials, which the client does not have.
//
// The parser reads only packet headers and the first payload byte of each command, so it
// costs one copy of the stream. After a sequence id it cannot place, it stops inspecting and
// passes everything through. That is safe, because a forwarded COM_CHANGE_USER then fails at
// the server for want of a password.
//
// With CLIENT_COMPRESS or CLIENT_ZSTD_COMPRESSION_ALGORITHM the stream is compressed and the
// parser is off, so COM_CHANGE_USER reaches the server, which rejects it.
type clientConn struct {
	net.Conn
	route string

	writeMu sync.Mutex // serialises the splice's writes and the ERR for COM_CHANGE_USER

	inspect   bool
	readErr   error  // a read error held back until out is drained
	in        []byte // read buffer
	out       []byte // parsed bytes; Read returns out[outOff:] first
	outOff    int
	header    [packetHeaderLen + 1]byte
	headerLen int  // bytes of header collected (the fifth is the command byte)
	remaining int  // payload bytes of the current packet still to pass or drop
	dropping  bool // the current packet is a COM_CHANGE_USER being dropped
	continued bool // the current packet is maxPayloadLen long, so the next one continues it
	state     int
	lastSeq   byte
}

func newClientConn(c net.Conn, capabilities uint32, route string) *clientConn {
	compressed := capabilities&(mysql.CLIENT_COMPRESS|mysql.CLIENT_ZSTD_COMPRESSION_ALGORITHM) != 0
	return &clientConn{Conn: c, route: route, inspect: !compressed}
}

// Read returns the client's stream with any COM_CHANGE_USER removed.
func (c *clientConn) Read(p []byte) (int, error) {
	for c.outOff == len(c.out) {
		c.out, c.outOff = c.out[:0], 0
		if c.readErr != nil {
			return 0, c.readErr
		}
		if !c.inspect {
			return c.Conn.Read(p)
		}
		if c.in == nil {
			c.in = make([]byte, readBufferSize)
		}
		n, err := c.Conn.Read(c.in)
		c.scan(c.in[:n])
		if err != nil {
			// Forward a partial header held back for classification: the stream ends here.
			c.out = append(c.out, c.header[:c.headerLen]...)
			c.headerLen = 0
			c.readErr = err
		}
	}
	n := copy(p, c.out[c.outOff:])
	c.outOff += n
	return n, nil
}

// Write sends server bytes to the client.
func (c *clientConn) Write(p []byte) (int, error) {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	return c.Conn.Write(p)
}

// CloseWrite half-closes the client connection.
func (c *clientConn) CloseWrite() error { return handshake.CloseWrite(c.Conn) }

// Unwrap returns the underlying connection.
func (c *clientConn) Unwrap() net.Conn { return c.Conn }

// scan moves the bytes of b that are to be forwarded to c.out.
func (c *clientConn) scan(b []byte) {
	for len(b) > 0 {
		if !c.inspect {
			c.out = append(c.out, b...)
			return
		}
		if c.remaining > 0 {
			k := min(c.remaining, len(b))
			if !c.dropping {
				c.out = append(c.out, b[:k]...)
			}
			c.remaining -= k
			b = b[k:]
			c.finishDrop()
			continue
		}
		c.header[c.headerLen] = b[0]
		c.headerLen++
		b = b[1:]
		if c.headerLen < packetHeaderLen {
			continue
		}
		length := int(c.header[0]) | int(c.header[1])<<8 | int(c.header[2])<<16
		if c.headerLen == packetHeaderLen && length > 0 && c.header[3] == 0 && !c.continued {
			continue // collect the command byte too
		}
		c.startPacket(length)
	}
}

// startPacket classifies the packet whose header (and command byte) has been collected.
func (c *clientConn) startPacket(length int) {
	seq := c.header[3]
	wasContinued := c.continued
	c.continued = length == maxPayloadLen
	switch {
	case wasContinued:
		// Same fate as the packet it continues.
	case seq == 0 && c.state != stateInfile:
		c.state = stateCommand
		c.dropping = c.headerLen > packetHeaderLen && c.header[4] == mysql.COM_CHANGE_USER
	case c.state == stateCommand && seq == 2:
		// The server asked for a LOAD DATA LOCAL file with sequence id 1.
		c.state = stateInfile
		if length == 0 {
			c.state = stateIdle
		}
	case c.state == stateInfile && seq == c.lastSeq+1:
		if length == 0 {
			c.state = stateIdle
		}
	default:
		c.inspect = false
	}
	c.lastSeq = seq
	if !c.dropping {
		c.out = append(c.out, c.header[:c.headerLen]...)
	}
	c.remaining = length - (c.headerLen - packetHeaderLen)
	c.headerLen = 0
	c.finishDrop()
}

// finishDrop sends the ERR for a COM_CHANGE_USER once all of it has been read.
func (c *clientConn) finishDrop() {
	if !c.dropping || c.remaining > 0 || c.continued {
		return
	}
	c.dropping = false
	msg := fmt.Sprintf("dbproxy route %q: COM_CHANGE_USER is not supported, because the agent "+
		"logs in as the route's stored user; use COM_RESET_CONNECTION to reset the session", c.route)
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	if err := writePacket(c.Conn, 1, errPacket(codeChangeUser, stateChangeUser, msg, true)); err != nil {
		c.readErr = err
	}
}
