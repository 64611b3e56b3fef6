package redisauth

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strconv"
)

// Limits of the client command stream. They mirror Redis 7.0 (server.h and
// processMultibulkBuffer in networking.c), so the agent splits the stream into the same
// commands as the server does.
const (
	// maxInlineLen is PROTO_INLINE_MAX_SIZE (64 KiB in server.h): Redis rejects an inline
	// command line that is longer. It bounds the inline AUTH, HELLO and RESET lines that
	// the agent buffers to rewrite them.
	maxInlineLen = 64 * 1024
	// maxBulkLen is the default proto-max-bulk-len (512 MB). A server configured with a
	// larger limit still gets bulk strings of at most this size through the agent.
	maxBulkLen = 512 * 1024 * 1024
	// maxMultibulkLen is INT_MAX, above which Redis 7 reports "invalid multibulk length".
	maxMultibulkLen = math.MaxInt32
	// maxHeaderLen bounds a "*N\r\n" or "$N\r\n" line: a sign, 19 digits of a 64-bit
	// integer, the type byte and CRLF. Longer lines cannot hold a number Redis accepts.
	maxHeaderLen = 1 + 1 + 19 + 2
)

// errNeedMore makes Read return the bytes it already has instead of blocking.
var errNeedMore = errors.New("need more input")

// commandKind is the handling of the arguments of the current command are handled.
type commandKind uint8

const (
	commandPass  commandKind = iota // copy every argument through
	commandDrop                     // read and drop every argument: AUTH, RESET
	commandHello                    // HELLO: rewrite the values of its AUTH clause
)

// commandReader reads the client's command stream and returns it with the credentials in
// AUTH and HELLO replaced by the stored ones and RESET replaced by a command that the
// server rejects. Commands are RESP arrays of bulk strings or inline command lines. Bytes
// of other commands are returned unchanged and bulk payloads stream through without being
// buffered whole.
type commandReader struct {
	in     clientInput
	route  string
	logger *slog.Logger

	// Pre-encoded replacements, built once per session.
	authCommand  []byte // AUTH with the stored credentials
	helloUser    []byte // the stored user name as a bulk string (default when empty)
	helloPass    []byte // the stored password as a bulk string
	resetCommand []byte // the command that makes the server reject RESET

	out    []byte // rewritten bytes not yet returned, from outPos on
	outPos int
	raw    int64 // bytes of the input to return unchanged
	drop   int64 // bytes of the input to read and discard

	kind      commandKind
	argsLeft  int  // arguments of the current array not yet read
	argIndex  int  // index of the next argument
	helloVals int  // values of a HELLO AUTH clause still to replace (2: user, 1: password)
	helloKeep bool // the next argument is the SETNAME value
	helloBad  bool // an invalid HELLO option was seen: the arguments after it become empty strings

	inlineOpen bool  // an inline line is being streamed through (see streamInline)
	inlineLen  int64 // bytes of that line returned so far
	inlineNull bool  // that line contains a NUL byte
	closing    bool  // a protocol error was forwarded: discard the rest of the input

	user, password string // the stored credentials, for inline HELLO
}

func newCommandReader(r io.Reader, route, user, password string) *commandReader {
	cr := &commandReader{in: clientInput{src: r}, route: route, logger: discardLog}
	cr.password = password
	if user == "" {
		cr.authCommand = appendCommand(nil, "AUTH", password)
		user = "default" // HELLO's AUTH clause always names a user.
	} else {
		cr.authCommand = appendCommand(nil, "AUTH", user, password)
	}
	cr.user = user
	cr.helloUser = appendBulk(nil, user)
	cr.helloPass = appendBulk(nil, password)
	cr.resetCommand = resetRejection(route)
	return cr
}

// discardLog is the logger of a command reader until Handshake sets its own.
var discardLog = slog.New(slog.DiscardHandler)

// Read fills p with rewritten command bytes. It never blocks while it holds bytes for p.
// While it waits for input with nothing buffered, it reads into p (see clientInput).
func (r *commandReader) Read(p []byte) (int, error) {
	n, err := r.read(p)
	r.in.scratch = nil // keep no reference to the caller's buffer
	if r.in.len() == 0 {
		r.in.release() // nothing to keep until the next Read
	}
	return n, err
}

func (r *commandReader) read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		wait := n == 0
		r.in.scratch = p[n:]
		var err error
		switch {
		case r.outPos < len(r.out):
			c := copy(p[n:], r.out[r.outPos:])
			n += c
			r.outPos += c
			if r.outPos == len(r.out) {
				r.out, r.outPos = r.out[:0], 0
			}
			continue
		case r.raw > 0:
			var m int
			m, err = r.copyRaw(p[n:], wait)
			n += m
			r.raw -= int64(m)
		case r.drop > 0:
			err = r.discard(wait)
		case r.inlineOpen:
			var m int
			m, err = r.streamInline(p[n:], wait)
			n += m
		case r.closing:
			r.drop = math.MaxInt64
			continue
		case r.argsLeft > 0:
			err = r.nextArgument(wait)
		default:
			err = r.nextCommand(wait)
		}
		if err == errNeedMore {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// copyRaw copies up to r.raw input bytes into p unchanged, reading more only when wait is
// true. Like bufio.Reader, it reads a large payload straight into p.
func (r *commandReader) copyRaw(p []byte, wait bool) (int, error) {
	k := int(min(int64(len(p)), r.raw))
	if r.in.len() == 0 {
		if !wait {
			return 0, errNeedMore
		}
		if k >= inputBufferSize {
			return r.in.read(p[:k])
		}
		if err := r.in.fill(inputBufferSize); err != nil {
			return 0, err
		}
	}
	m := copy(p[:k], r.in.buffered())
	r.in.discard(m)
	return m, nil
}

// discard drops buffered input for r.drop, reading more only when wait is true.
func (r *commandReader) discard(wait bool) error {
	if r.in.len() == 0 {
		if !wait {
			return errNeedMore
		}
		if err := r.in.fill(inputBufferSize); err != nil {
			return err
		}
	}
	k := int(min(int64(r.in.len()), r.drop))
	r.in.discard(k)
	r.drop -= int64(k)
	return nil
}

// peekLine returns the length of the header line at offset off of the buffered input,
// ending after the byte that follows its '\r' as Redis's parser ends it.
func (r *commandReader) peekLine(off int, wait bool) (int, error) {
	for {
		buf := r.in.buffered()[off:]
		if i := bytes.IndexByte(buf, '\r'); i >= 0 && i+1 < len(buf) {
			if i+2 > maxHeaderLen {
				return 0, errHeaderTooLong
			}
			return i + 2, nil
		}
		if len(buf) >= maxHeaderLen {
			return 0, errHeaderTooLong
		}
		if !wait {
			return 0, errNeedMore
		}
		if err := r.in.fill(inputBufferSize); err != nil {
			return 0, err
		}
	}
}

var errHeaderTooLong = errors.New("header line too long")

// peek returns the next n buffered bytes, reading more only when wait is true.
func (r *commandReader) peek(n int, wait bool) ([]byte, error) {
	for r.in.len() < n {
		if !wait {
			return nil, errNeedMore
		}
		if err := r.in.fill(inputBufferSize); err != nil {
			return nil, err
		}
	}
	return r.in.buffered()[:n], nil
}

// nextCommand reads the start of the next command: an array header and its first
// argument, the command name, or an inline command line.
func (r *commandReader) nextCommand(wait bool) error {
	first, err := r.peek(1, wait)
	if err != nil {
		return err
	}
	if first[0] != '*' {
		return r.inlineCommand(wait)
	}

	headerLen, err := r.peekLine(0, wait)
	if err != nil {
		return r.protocolError(err, "invalid multibulk length")
	}
	header := r.in.buffered()[:headerLen]
	count, ok := parseInteger(header[1 : headerLen-2])
	if !ok || count > maxMultibulkLen {
		return r.protocolError(nil, "invalid multibulk length")
	}
	if count <= 0 {
		// Redis skips an empty array without a reply.
		r.raw = int64(headerLen)
		return nil
	}

	// The command name decides how the arguments are handled.
	nameHeaderLen, err := r.peekLine(headerLen, wait)
	if err != nil {
		return r.protocolError(err, "invalid bulk length")
	}
	nameHeader := r.in.buffered()[headerLen : headerLen+nameHeaderLen]
	size, err := bulkSize(nameHeader)
	if err != nil {
		return r.protocolError(nil, err.Error())
	}
	kind, total := commandPass, int64(headerLen+nameHeaderLen)+size+2
	if size == 4 || size == 5 {
		buf, err := r.peek(headerLen+nameHeaderLen+int(size), wait)
		if err != nil {
			return err
		}
		kind = r.classify(buf[headerLen+nameHeaderLen:], int(count))
	}
	r.argsLeft, r.argIndex = int(count)-1, 1
	r.kind = kind
	if kind == commandPass || kind == commandHello {
		r.raw = total
	} else {
		r.drop = total
	}
	return nil
}

// classify returns how to handle a command named name with count elements, and queues
// the replacement for AUTH and RESET.
func (r *commandReader) classify(name []byte, count int) commandKind {
	switch {
	case equalFold(name, "AUTH"):
		if count == 2 || count == 3 {
			r.out = append(r.out, r.authCommand...)
		} else {
			// Redis rejects other arities: keep the error without sending the client's values.
			r.out = appendCommand(r.out, "AUTH")
		}
		return commandDrop
	case equalFold(name, "RESET"):
		r.out = append(r.out, r.resetCommand...)
		return commandDrop
	case equalFold(name, "HELLO"):
		r.helloVals, r.helloKeep, r.helloBad = 0, false, false
		return commandHello
	}
	return commandPass
}

// nextArgument reads the header of the next bulk string of the current command.
func (r *commandReader) nextArgument(wait bool) error {
	headerLen, err := r.peekLine(0, wait)
	if err != nil {
		return r.protocolError(err, "invalid bulk length")
	}
	header := r.in.buffered()[:headerLen]
	size, err := bulkSize(header)
	if err != nil {
		return r.protocolError(nil, err.Error())
	}
	total := int64(headerLen) + size + 2
	index := r.argIndex
	r.argIndex++
	r.argsLeft--

	switch r.kind {
	case commandPass:
		r.raw = total
	case commandDrop:
		r.drop = total
	case commandHello:
		return r.helloArgument(index, headerLen, size, total, wait)
	}
	return nil
}

// helloArgument handles argument index of HELLO [protover [AUTH username password]
// [SETNAME clientname]], walking the options as Redis 7.0's helloCommand does.
func (r *commandReader) helloArgument(index, headerLen int, size, total int64, wait bool) error {
	switch {
	case index == 1 || r.helloKeep:
		r.helloKeep = false
		r.raw = total
	case r.helloVals == 2:
		r.helloVals--
		r.drop = total
		r.out = append(r.out, r.helloUser...)
	case r.helloVals == 1:
		r.helloVals--
		r.drop = total
		r.out = append(r.out, r.helloPass...)
	case !r.helloBad && (size == 4 || size == 7):
		buf, err := r.peek(headerLen+int(size), wait)
		if err != nil {
			// Undo the bookkeeping so that the argument is read again.
			r.argIndex--
			r.argsLeft++
			return err
		}
		option := buf[headerLen:]
		switch {
		case equalFold(option, "AUTH") && r.argsLeft >= 2:
			r.helloVals = 2
			r.raw = total
		case equalFold(option, "SETNAME") && r.argsLeft >= 1:
			r.helloKeep = true
			r.raw = total
		case equalFold(option, "AUTH") || equalFold(option, "SETNAME"):
			// An option without enough values: the server names it in its syntax error.
			r.helloBad = true
			r.raw = total
		default:
			r.replaceInvalid(total)
		}
	default:
		r.replaceInvalid(total)
	}
	return nil
}

// helloOptionHidden replaces the first invalid option of a HELLO, which the server
// names in its error: "Syntax error in HELLO option '(hidden by dbproxy...)'".
const helloOptionHidden = "(hidden by dbproxy: it may be a credential)"

// replaceInvalid drops an argument of an invalid HELLO and sends helloOptionHidden in
// place of the first one and empty strings after it. The server then reports the syntax
// error at this option and never receives the values that follow, which may be
// credentials.
func (r *commandReader) replaceInvalid(total int64) {
	r.drop = total
	if r.helloBad {
		r.out = append(r.out, "$0\r\n\r\n"...)
		return
	}
	r.helloBad = true
	r.out = appendBulk(r.out, helloOptionHidden)
}

// bulkSize parses a "$N\r\n" header the way Redis does: the two bytes after the number
// are not checked.
func bulkSize(header []byte) (int64, error) {
	if len(header) < 3 || header[0] != '$' {
		return 0, errExpectedBulk
	}
	size, ok := parseInteger(header[1 : len(header)-2])
	if !ok || size < 0 || size > maxBulkLen {
		return 0, errInvalidBulkLen
	}
	return size, nil
}

var (
	errExpectedBulk   = errors.New("expected '$'")
	errInvalidBulkLen = errors.New("invalid bulk length")
)

// protocolError handles input that Redis would reject with a protocol error. The agent
// cannot tell for sure where the next command starts, so it forwards a command that the
// server rejects with the reason, followed by a frame that makes the server reply with a
// protocol error and close the connection. The rest of the input is discarded.
func (r *commandReader) protocolError(err error, reason string) error {
	if err != nil && err != errHeaderTooLong {
		// A read error or errNeedMore: no verdict yet.
		return err
	}
	r.logger.Debug("redis client protocol error, so the server will close the session", "route", r.route, "reason", reason)
	r.out = append(r.out, rejectionCommand(r.route, "protocol error: "+reason)...)
	r.out = append(r.out, "*1\r\n?\r\n"...) // Redis: "Protocol error: expected '$', got '?'"
	r.argsLeft, r.raw, r.drop = 0, 0, 0
	r.closing = true
	return nil
}

// resetRejection encodes the command that takes the place of RESET: a command that Redis
// does not implement, whose name is the reason. The server replies "-ERR unknown command
// 'RESET (not supported by dbproxy route "NAME": ...)', with args beginning with: " in order
// with the replies to pipelined commands, and the session stays logged in. Redis 7.0 shows
// at most 128 bytes of the name, which holds the whole text for route names of up to 38 bytes.
func resetRejection(route string) []byte {
	return appendCommand(nil, fmt.Sprintf("RESET (not supported by dbproxy route %q: it would log the session out; reconnect instead)", route))
}

// rejectionCommand encodes a command that Redis does not implement, so the server replies
// "-ERR unknown command 'dbproxy', with args beginning with: '<reason>'" in order with
// the replies to pipelined commands. Redis 7.0 shows at most 128 bytes of the reason.
func rejectionCommand(route, reason string) []byte {
	return appendCommand(nil, "dbproxy", fmt.Sprintf("route %q: %s", route, reason))
}

// appendCommand appends args encoded as a RESP array of bulk strings.
func appendCommand(dst []byte, args ...string) []byte {
	dst = append(dst, '*')
	dst = strconv.AppendInt(dst, int64(len(args)), 10)
	dst = append(dst, '\r', '\n')
	for _, a := range args {
		dst = appendBulk(dst, a)
	}
	return dst
}

func appendBulk(dst []byte, s string) []byte {
	dst = append(dst, '$')
	dst = strconv.AppendInt(dst, int64(len(s)), 10)
	dst = append(dst, '\r', '\n')
	dst = append(dst, s...)
	return append(dst, '\r', '\n')
}

// parseInteger parses b as Redis's string2ll does: an optional '-', no '+', no leading
// zeros, and a value that fits in 64 bits.
func parseInteger(b []byte) (int64, bool) {
	if len(b) == 1 && b[0] == '0' {
		return 0, true
	}
	neg := len(b) > 0 && b[0] == '-'
	if neg {
		b = b[1:]
	}
	if len(b) == 0 || b[0] < '1' || b[0] > '9' || len(b) > 19 {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + uint64(c-'0')
	}
	if v > math.MaxInt64+uint64(1) || (!neg && v > math.MaxInt64) {
		return 0, false
	}
	if neg {
		return -int64(v), true
	}
	return int64(v), true
}

// equalFold reports whether b equals the upper-case ASCII word, ignoring ASCII case as
// Redis's strcasecmp does. bytes.EqualFold would also match Unicode folds such as the
// long s (U+017F) for 's'.
func equalFold(b []byte, word string) bool {
	if len(b) != len(word) {
		return false
	}
	for i := range len(b) {
		c := b[i]
		if 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		}
		if c != word[i] {
			return false
		}
	}
	return true
}
