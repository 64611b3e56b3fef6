package redisauth

import (
	"bytes"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// parseStream splits a complete command stream into commands the way Redis 7.0 does. It
// returns false for streams it does not model: protocol errors, a command cut off at the
// end, inline lines with NUL bytes or longer than maxInlineLen.
func parseStream(b []byte) ([][]string, bool) {
	var commands [][]string
	for len(b) > 0 {
		if b[0] != '*' {
			end := bytes.IndexByte(b, '\n')
			if end < 0 || end > maxInlineLen || bytes.IndexByte(b[:end], 0) >= 0 {
				return nil, false
			}
			line := bytes.TrimSuffix(b[:end], []byte("\r"))
			b = b[end+1:]
			args, ok := splitArgs(line)
			if !ok {
				return nil, false
			}
			if len(args) > 0 {
				commands = append(commands, toStrings(args))
			}
			continue
		}
		header, rest, ok := cutHeader(b)
		if !ok {
			return nil, false
		}
		count, ok := parseInteger(header[1:])
		if !ok || count > maxMultibulkLen {
			return nil, false
		}
		b = rest
		var command []string
		for range max(count, 0) {
			header, rest, ok := cutHeader(b)
			if !ok || header[0] != '$' {
				return nil, false
			}
			size, ok := parseInteger(header[1:])
			if !ok || size < 0 || size > int64(len(rest)-2) {
				return nil, false
			}
			command = append(command, string(rest[:size]))
			b = rest[size+2:]
		}
		if count > 0 {
			commands = append(commands, command)
		}
	}
	return commands, true
}

// cutHeader splits off a header line that ends with '\r' and one more byte.
func cutHeader(b []byte) (header, rest []byte, ok bool) {
	i := bytes.IndexByte(b, '\r')
	if i < 1 || i+2 > len(b) || i+2 > maxHeaderLen {
		return nil, nil, false
	}
	return b[:i], b[i+2:], true
}

func toStrings(args [][]byte) []string {
	s := make([]string, len(args))
	for i, a := range args {
		s[i] = string(a)
	}
	return s
}

// upperASCII upper-cases ASCII letters only, as Redis's strcasecmp compares.
func upperASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'a' <= c && c <= 'z' {
			b[i] = c - ('a' - 'A')
		}
	}
	return string(b)
}

// expectedRewrite is the model of what the reader sends for one client command.
func expectedRewrite(c []string) []string {
	switch {
	case upperASCII(c[0]) == "AUTH":
		if len(c) == 2 || len(c) == 3 {
			return []string{"AUTH", testUser, testPassword}
		}
		return []string{"AUTH"}
	case upperASCII(c[0]) == "RESET":
		return []string{`RESET (not supported by dbproxy route "cache": it would log the session out; reconnect instead)`}
	case upperASCII(c[0]) == "HELLO":
		out := append([]string(nil), c[:min(len(c), 2)]...)
		for j := 2; j < len(c); j++ {
			more := len(c) - 1 - j
			switch {
			case upperASCII(c[j]) == "AUTH" && more >= 2:
				out = append(out, c[j], testUser, testPassword)
				j += 2
			case upperASCII(c[j]) == "SETNAME" && more >= 1:
				out = append(out, c[j], c[j+1])
				j++
			case upperASCII(c[j]) == "AUTH" || upperASCII(c[j]) == "SETNAME":
				out = append(out, c[j])
				for j++; j < len(c); j++ {
					out = append(out, "")
				}
			default:
				out = append(out, helloOptionHidden)
				for j++; j < len(c); j++ {
					out = append(out, "")
				}
			}
		}
		return out
	}
	return c
}

// FuzzCommandReader checks that the reader never panics or stalls, and that for every
// stream Redis would accept, the output is the same commands with only AUTH, HELLO and
// RESET rewritten, however the input and output are split into reads.
func FuzzCommandReader(f *testing.F) {
	f.Add([]byte(resp("SET", "k", "v")+resp("AUTH", "x")+"PING\r\n"), uint8(3), uint8(5))
	f.Add([]byte(resp("HELLO", "3", "AUTH", "u", "p", "SETNAME", "n")+"RESET\r\n"), uint8(1), uint8(1))
	f.Add([]byte(resp("HELLO", "3", "AUTH", "u")+"HELLO 3 x AUTH u p\r\nHELLO 3 SETNAME\r\n"), uint8(2), uint8(3))
	f.Add([]byte("AU\"TH\" 'a b'\r\n*0\r\n*1\r\n$4\r\nPINGxx"), uint8(2), uint8(9))
	f.Fuzz(func(t *testing.T, input []byte, inChunk, outChunk uint8) {
		output := rewrite(t, input, testUser, int(inChunk)+1, int(outChunk)+1)
		in, ok := parseStream(input)
		if !ok {
			return
		}
		var want [][]string
		for _, c := range in {
			want = append(want, expectedRewrite(c))
		}
		got, ok := parseStream(output)
		if !ok {
			t.Fatalf("output %q of input %q is not a valid command stream", output, input)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("commands of input %q (-want +got):\n%s", input, diff)
		}
	})
}

// FuzzReplyScanner checks that the scanner never panics and reaches the same state
// whether the replies arrive at once or byte by byte.
func FuzzReplyScanner(f *testing.F) {
	f.Add([]byte("+OK\r\n-MOVED 1 a:1\r\n$5\r\nhello\r\n*2\r\n:1\r\n_\r\n"))
	f.Add([]byte("$?\r\n;4\r\nabcd\r\n;0\r\n>2\r\n$10\r\ninvalidate\r\n*0\r\n"))
	f.Fuzz(func(t *testing.T, replies []byte) {
		whole := replyScanner{logger: discardLogger()}
		whole.scan(replies)
		split := replyScanner{logger: discardLogger()}
		for i := range replies {
			split.scan(replies[i : i+1])
		}
		type state struct {
			state                     replyState
			length                    int64
			digits, matched           int
			negOrQ, chunk, moved, ask bool
		}
		snapshot := func(s *replyScanner) state {
			return state{s.state, s.length, s.digits, s.matched, s.negOrQ, s.chunk, s.moved, s.ask}
		}
		if snapshot(&whole) != snapshot(&split) {
			t.Fatalf("state after %q: whole %+v, byte by byte %+v", replies, whole, split)
		}
	})
}
