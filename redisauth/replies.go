package redisauth

import (
	"bytes"
	"log/slog"
	"net"
	"sync/atomic"

	"github.com/knoxcall/dbproxy/internal/handshake"
)

// redirectWarned makes the warning about Cluster redirects appear once per process.
var redirectWarned atomic.Bool

// maxLengthDigits bounds the digits of a reply length: 18 digits cannot overflow int64.
const maxLengthDigits = 18

// replyState is the position of replyScanner within the reply stream.
type replyState uint8

const (
	replyType    replyState = iota // at the type byte that starts an element
	replyLine                      // inside a line whose content does not matter
	replyError                     // inside a simple error: matching "MOVED " and "ASK "
	replyLength                    // inside the length of a blob: $, !, = or ;
	replyPayload                   // inside a blob's payload and its CRLF
	replyOff                       // unknown input: scanning stopped
)

// replyScanner finds simple errors that start with MOVED or ASK in the server's replies,
// the redirects of Redis Cluster. Every RESP2 and RESP3 element, nested or not, starts
// with a type byte right after the previous element ends, so the scanner needs no stack:
// it skips lines and blob payloads and looks only at error lines. It allocates nothing.
type replyScanner struct {
	state   replyState
	length  int64 // blob length being parsed, then payload bytes left to skip
	digits  int
	negOrQ  bool // the length was "-1" (null) or "?" (streamed): no payload follows
	chunk   bool // the blob is a ';' chunk of a streamed string, where ";0" ends the string
	matched int  // bytes of the error line compared so far
	moved   bool // the error line still matches "MOVED "
	ask     bool // the error line still matches "ASK "

	route      string
	logger     *slog.Logger
	onRedirect func(code string) // test hook, called for every redirect; nil in production
}

// scan advances the scanner over the next bytes of the reply stream.
func (s *replyScanner) scan(b []byte) {
	for len(b) > 0 {
		switch s.state {
		case replyType:
			s.startElement(b[0])
			b = b[1:]
		case replyLine:
			i := bytes.IndexByte(b, '\n')
			if i < 0 {
				return
			}
			b = b[i+1:]
			s.state = replyType
		case replyError:
			b = s.scanError(b)
		case replyLength:
			b = s.scanLength(b)
		case replyPayload:
			if int64(len(b)) < s.length {
				s.length -= int64(len(b))
				return
			}
			b = b[s.length:]
			s.state, s.length = replyType, 0
		case replyOff:
			return
		}
	}
}

func (s *replyScanner) startElement(t byte) {
	switch t {
	case '+', ':', ',', '(', '#', '_', '.', '*', '%', '~', '>', '|':
		// Lines: simple strings, numbers, null, booleans, the end of a streamed
		// aggregate, and aggregate headers, whose elements follow as elements of their own.
		s.state = replyLine
	case '-':
		s.state, s.matched, s.moved, s.ask = replyError, 0, true, true
	case '$', '!', '=', ';':
		s.state, s.length, s.digits, s.negOrQ, s.chunk = replyLength, 0, 0, false, t == ';'
	default:
		s.stop("unknown RESP type byte")
	}
}

// scanError compares the start of a simple error with the redirect codes.
func (s *replyScanner) scanError(b []byte) []byte {
	const moved, ask = "MOVED ", "ASK "
	for i, c := range b {
		if c == '\n' {
			s.state = replyType
			return b[i+1:]
		}
		s.moved = s.moved && s.matched < len(moved) && moved[s.matched] == c
		s.ask = s.ask && s.matched < len(ask) && ask[s.matched] == c
		s.matched++
		switch {
		case s.moved && s.matched == len(moved):
			s.warnRedirect("MOVED")
		case s.ask && s.matched == len(ask):
			s.warnRedirect("ASK")
		case s.moved || s.ask:
			continue
		}
		s.state = replyLine
		return b[i+1:]
	}
	return nil
}

// scanLength parses the length of a blob and moves on to its payload.
func (s *replyScanner) scanLength(b []byte) []byte {
	for i, c := range b {
		switch {
		case c >= '0' && c <= '9' && s.digits < maxLengthDigits:
			s.length = s.length*10 + int64(c-'0')
			s.digits++
		case (c == '-' || c == '?') && s.digits == 0 && !s.negOrQ:
			s.negOrQ = true
		case c == '\r':
		case c == '\n':
			if s.negOrQ || s.digits == 0 || s.chunk && s.length == 0 {
				s.state = replyType
			} else {
				s.state, s.length = replyPayload, s.length+2
			}
			return b[i+1:]
		default:
			s.stop("invalid blob length")
			return nil
		}
	}
	return nil
}

func (s *replyScanner) warnRedirect(code string) {
	if s.onRedirect != nil {
		s.onRedirect(code)
	}
	if redirectWarned.CompareAndSwap(false, true) {
		s.logger.Warn("redis server sent a cluster redirect; Redis Cluster is not supported, so the client must follow it itself",
			"route", s.route, "redirect", code)
	}
}

// stop ends scanning for this session. Redis 7 never sends such replies, so this is a
// server of another kind; its bytes still pass through unchanged.
func (s *replyScanner) stop(reason string) {
	s.state = replyOff
	s.logger.Debug("redis reply scanning stopped", "route", s.route, "reason", reason)
}

// upstreamConn is the upstream connection handed to the splice: reads return the bytes
// that the login read ahead first and pass through the reply scanner.
type upstreamConn struct {
	*handshake.BufferedConn
	scanner replyScanner
}

func (c *upstreamConn) Read(p []byte) (int, error) {
	n, err := c.BufferedConn.Read(p)
	c.scanner.scan(p[:n])
	return n, err
}

// clientConn is the client connection handed to the splice: reads return the client's
// commands with credentials rewritten.
type clientConn struct {
	net.Conn
	commands *commandReader
}

func (c *clientConn) Read(p []byte) (int, error) { return c.commands.Read(p) }

// CloseWrite half-closes the client connection.
func (c *clientConn) CloseWrite() error { return handshake.CloseWrite(c.Conn) }
