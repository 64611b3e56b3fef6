package redisauth

import (
	"bytes"
)

// Inline commands are lines of space-separated arguments, as typed into telnet. Redis 7.0
// (processInlineBuffer in networking.c) ends a line at '\n', drops a '\r' before it, and
// splits it with sdssplitargs, which also understands quoted arguments.

// inlineCommand reads an inline command line. Lines that are not AUTH, HELLO or RESET are
// returned unchanged; those three are rewritten like their array forms.
func (r *commandReader) inlineCommand(wait bool) error {
	var buf []byte
	end := -1
	for {
		buf = r.in.buffered()
		if end = bytes.IndexByte(buf, '\n'); end >= 0 {
			break
		}

		// Without its end, a line streams through once its command name is known and
		// needs no rewrite. Other lines are buffered whole, up to the length Redis accepts.
		name, quoted, complete := firstToken(buf, false)
		if complete && !quoted && !isRewritten(name) {
			r.inlineOpen = true
			return nil
		}
		if len(buf) > maxInlineLen {
			return r.protocolError(nil, "too big inline request")
		}
		if !wait {
			return errNeedMore
		}
		if err := r.in.fill(maxInlineLen + 1); err != nil {
			return err
		}
	}

	line := buf[:end]
	if bytes.IndexByte(line, 0) >= 0 {
		// Redis looks for '\n' with strchr, which stops at a NUL byte, so the server never
		// finds the end of this line and reads on until its inline limit. Stream the input
		// through the same way.
		r.inlineOpen, r.inlineNull = true, true
		return nil
	}
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	name, quoted, _ := firstToken(line, true)
	if !quoted && !isRewritten(name) {
		r.raw = int64(end + 1)
		return nil
	}

	// Rare path: quoted arguments, or a command that is rewritten.
	args, ok := splitArgs(line)
	if !ok {
		return r.protocolError(nil, "unbalanced quotes in request")
	}
	if len(args) == 0 || !isRewritten(args[0]) {
		r.raw = int64(end + 1)
		return nil
	}
	r.in.discard(end + 1)
	r.rewriteInline(args)
	return nil
}

// rewriteInline queues the array form of an inline AUTH, HELLO or RESET command with the
// same replacements as the array forms get.
func (r *commandReader) rewriteInline(args [][]byte) {
	name := args[0]
	switch {
	case equalFold(name, "AUTH"):
		r.classify(name, len(args))
	case equalFold(name, "RESET"):
		r.classify(name, len(args))
	default: // HELLO
		out := []string{string(name)}
		if len(args) > 1 {
			out = append(out, string(args[1]))
		}
		for j := 2; j < len(args); j++ {
			more := len(args) - 1 - j
			switch {
			case equalFold(args[j], "AUTH") && more >= 2:
				out = append(out, string(args[j]), r.user, r.password)
				j += 2
			case equalFold(args[j], "SETNAME") && more >= 1:
				out = append(out, string(args[j]), string(args[j+1]))
				j++
			default:
				// An invalid option: the server reports it and never receives what follows.
				option := helloOptionHidden
				if equalFold(args[j], "AUTH") || equalFold(args[j], "SETNAME") {
					option = string(args[j])
				}
				out = append(out, option)
				for j++; j < len(args); j++ {
					out = append(out, "")
				}
			}
		}
		r.out = appendCommand(r.out, out...)
	}
}

// streamInline returns the next part of an inline line that is passed through unchanged.
// Once more than maxInlineLen bytes of it went through without a line end, the server has
// rejected the request and closes the connection, so the rest of the input is discarded.
func (r *commandReader) streamInline(p []byte, wait bool) (int, error) {
	if _, err := r.peek(1, wait); err != nil {
		return 0, err
	}
	buf := r.in.buffered()
	if len(buf) > len(p) {
		buf = buf[:len(p)]
	}
	if limit := maxInlineLen + 1 - r.inlineLen; int64(len(buf)) > limit {
		buf = buf[:limit]
	}
	done := false
	if !r.inlineNull {
		end := bytes.IndexByte(buf, '\n')
		if end >= 0 {
			buf = buf[:end+1]
		}
		if bytes.IndexByte(buf, 0) >= 0 {
			r.inlineNull = true
		} else {
			done = end >= 0
		}
	}
	n := copy(p, buf)
	r.in.discard(n)
	r.inlineLen += int64(n)
	switch {
	case done:
		r.inlineOpen, r.inlineLen = false, 0
	case r.inlineLen > maxInlineLen:
		r.inlineOpen, r.inlineLen, r.inlineNull = false, 0, false
		r.closing = true
	}
	return n, nil
}

// isRewritten reports whether name is a command whose arguments the agent replaces.
func isRewritten(name []byte) bool {
	return equalFold(name, "AUTH") ||
		equalFold(name, "HELLO") ||
		equalFold(name, "RESET")
}

// firstToken returns the first argument of an inline line without quote processing.
// quoted reports that the argument contains a quote, so only splitArgs can tell what it
// is. complete reports that the argument ends within buf, and atEnd means that buf is the
// whole line.
func firstToken(buf []byte, atEnd bool) (name []byte, quoted, complete bool) {
	i := 0
	for i < len(buf) && isSpace(buf[i]) {
		i++
	}
	start := i
	for ; i < len(buf); i++ {
		switch buf[i] {
		case ' ', '\n', '\r', '\t':
			return buf[start:i], false, true
		case '"', '\'':
			return nil, true, false
		}
	}
	return buf[start:], false, atEnd
}

// splitArgs splits an inline command line as Redis 7.0's sdssplitargs does: double quotes
// with \n, \r, \t, \b, \a and \xHH escapes, single quotes with \', and a closing quote
// that must be followed by a space or the end. line must not contain a NUL byte. It
// returns false for unbalanced quotes.
func splitArgs(line []byte) ([][]byte, bool) {
	at := func(i int) byte {
		if i < len(line) {
			return line[i]
		}
		return 0
	}
	var args [][]byte
	p := 0
	for {
		for p < len(line) && isSpace(line[p]) {
			p++
		}
		if p == len(line) {
			return args, true
		}
		current := []byte{}
		inDouble, inSingle, done := false, false, false
		for !done {
			c := at(p)
			switch {
			case inDouble:
				switch {
				case c == '\\' && at(p+1) == 'x' && isHex(at(p+2)) && isHex(at(p+3)):
					current = append(current, hexValue(at(p+2))<<4|hexValue(at(p+3)))
					p += 3
				case c == '\\' && at(p+1) != 0:
					p++
					current = append(current, unescape(at(p)))
				case c == '"':
					if next := at(p + 1); next != 0 && !isSpace(next) {
						return nil, false
					}
					done = true
				case c == 0:
					return nil, false
				default:
					current = append(current, c)
				}
			case inSingle:
				switch {
				case c == '\\' && at(p+1) == '\'':
					p++
					current = append(current, '\'')
				case c == '\'':
					if next := at(p + 1); next != 0 && !isSpace(next) {
						return nil, false
					}
					done = true
				case c == 0:
					return nil, false
				default:
					current = append(current, c)
				}
			default:
				switch c {
				case ' ', '\n', '\r', '\t', 0:
					done = true
				case '"':
					inDouble = true
				case '\'':
					inSingle = true
				default:
					current = append(current, c)
				}
			}
			if at(p) != 0 {
				p++
			}
		}
		args = append(args, current)
	}
}

// isSpace is C's isspace in the "C" locale.
func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'
}

func isHex(c byte) bool {
	return ('0' <= c && c <= '9') || ('a' <= c && c <= 'f') || ('A' <= c && c <= 'F')
}

func hexValue(c byte) byte {
	switch {
	case c >= 'a':
		return c - 'a' + 10
	case c >= 'A':
		return c - 'A' + 10
	}
	return c - '0'
}

func unescape(c byte) byte {
	switch c {
	case 'n':
		return '\n'
	case 'r':
		return '\r'
	case 't':
		return '\t'
	case 'b':
		return '\b'
	case 'a':
		return '\a'
	}
	return c
}
