package redisauth

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/knoxcall/dbproxy/internal/dbtest"
)

const (
	testRoute    = "cache"
	testUser     = "app"
	testPassword = "stored-pw"
)

// chunkReader returns its data in reads of at most size bytes.
type chunkReader struct {
	data []byte
	size int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := min(len(p), r.size, len(r.data))
	copy(p, r.data[:n])
	r.data = r.data[n:]
	return n, nil
}

// rewrite runs input through a commandReader, reading in and out in pieces of the given
// sizes, and returns everything it produced.
func rewrite(t testing.TB, input []byte, user string, inChunk, outChunk int) []byte {
	t.Helper()
	cr := newCommandReader(&chunkReader{data: input, size: inChunk}, testRoute, user, testPassword)
	var out bytes.Buffer
	p := make([]byte, outChunk)
	for range 10 * (len(input) + 100) {
		n, err := cr.Read(p)
		out.Write(p[:n])
		if errors.Is(err, io.EOF) {
			return out.Bytes()
		}
		if err != nil {
			t.Fatalf("Read: %v", err)
		}
	}
	t.Fatalf("Read made no progress on %q", input)
	return nil
}

func resp(args ...string) string { return string(appendCommand(nil, args...)) }

var resetReplacement = resp(`RESET (not supported by dbproxy route "cache": it would log the session out; reconnect instead)`)

func TestCommandReaderRewrites(t *testing.T) {
	tests := []struct {
		name  string
		user  string
		input string
		want  string
	}{
		{"other command", testUser, resp("SET", "k", "v"), resp("SET", "k", "v")},
		{"auth password", testUser, resp("AUTH", "dummy"), resp("AUTH", testUser, testPassword)},
		{"auth user password", testUser, resp("auth", "u", "p"), resp("AUTH", testUser, testPassword)},
		{"auth without user stored", "", resp("AUTH", "u", "p"), resp("AUTH", testPassword)},
		{"auth too many args", testUser, resp("AUTH", "a", "b", "c"), resp("AUTH")},
		{"auth alone", testUser, resp("AUTH"), resp("AUTH")},
		{"hello 3", testUser, resp("HELLO", "3"), resp("HELLO", "3")},
		{"hello alone", testUser, resp("HELLO"), resp("HELLO")},
		{"hello auth", testUser, resp("HELLO", "3", "AUTH", "default", "dummy"),
			resp("HELLO", "3", "AUTH", testUser, testPassword)},
		{"hello auth setname", testUser, resp("hello", "2", "auth", "u", "p", "setname", "n"),
			resp("hello", "2", "auth", testUser, testPassword, "setname", "n")},
		{"hello setname auth", testUser, resp("HELLO", "3", "SETNAME", "n", "AUTH", "u", "p"),
			resp("HELLO", "3", "SETNAME", "n", "AUTH", testUser, testPassword)},
		{"hello auth default user", "", resp("HELLO", "3", "AUTH", "u", "p"),
			resp("HELLO", "3", "AUTH", "default", testPassword)},
		{"hello auth missing password", testUser, resp("HELLO", "3", "AUTH", "u"),
			resp("HELLO", "3", "AUTH", "")},
		{"hello bad option", testUser, resp("HELLO", "3", "BOGUS", "AUTH", "u", "p"),
			resp("HELLO", "3", helloOptionHidden, "", "", "")},
		{"hello setname missing name", testUser, resp("HELLO", "3", "AUTH", "u", "p", "SETNAME"),
			resp("HELLO", "3", "AUTH", testUser, testPassword, "SETNAME")},
		{"hello setname value auth", testUser, resp("HELLO", "3", "SETNAME", "AUTH", "AUTH", "u", "p"),
			resp("HELLO", "3", "SETNAME", "AUTH", "AUTH", testUser, testPassword)},
		{"reset", testUser, resp("RESET"), resetReplacement},
		{"reset with args", testUser, resp("reset", "x"), resetReplacement},
		{"empty array", testUser, "*0\r\n*-1\r\n" + resp("PING"), "*0\r\n*-1\r\n" + resp("PING")},
		{"inline ping", testUser, "PING\r\n", "PING\r\n"},
		{"inline empty line", testUser, "\r\n  \n", "\r\n  \n"},
		{"inline auth", testUser, "AUTH dummy\r\n", resp("AUTH", testUser, testPassword)},
		{"inline auth lf only", testUser, "  auth u p\n", resp("AUTH", testUser, testPassword)},
		{"inline quoted auth", testUser, "\"AUTH\" 'x y'\r\n", resp("AUTH", testUser, testPassword)},
		{"inline quote mid token", testUser, "AU\"TH\" x\r\n", resp("AUTH", testUser, testPassword)},
		{"inline quoted other", testUser, "SET k \"a\\x41\\n\"\r\n", "SET k \"a\\x41\\n\"\r\n"},
		{"inline hello", testUser, "HELLO 3 AUTH u p SETNAME n\r\n",
			resp("HELLO", "3", "AUTH", testUser, testPassword, "SETNAME", "n")},
		{"inline reset", testUser, "RESET\r\n", resetReplacement},
		{"auth in pipeline", testUser, resp("PING") + resp("AUTH", "x") + resp("GET", "k"),
			resp("PING") + resp("AUTH", testUser, testPassword) + resp("GET", "k")},
		{"mixed forms", testUser, "PING\r\n" + resp("AUTH", "x") + "AUTH y\n" + resp("ECHO", "AUTH"),
			"PING\r\n" + resp("AUTH", testUser, testPassword) + resp("AUTH", testUser, testPassword) + resp("ECHO", "AUTH")},
		{"bulk terminator unchecked", testUser, "*1\r\n$4\r\nPINGxx*1\r\n$4\r\nAUTHzz",
			"*1\r\n$4\r\nPINGxx" + resp("AUTH")},
	}
	for _, tt := range tests {
		for _, chunks := range [][2]int{{1 << 20, 1 << 20}, {1, 1}, {3, 7}} {
			t.Run(fmt.Sprintf("%s/%d-%d", tt.name, chunks[0], chunks[1]), func(t *testing.T) {
				got := rewrite(t, []byte(tt.input), tt.user, chunks[0], chunks[1])
				if diff := cmp.Diff(tt.want, string(got)); diff != "" {
					t.Errorf("rewrite(%q) mismatch (-want +got):\n%s", tt.input, diff)
				}
			})
		}
	}
}

func TestCommandReaderProtocolErrors(t *testing.T) {
	closing := "*1\r\n?\r\n"
	tests := []struct {
		name   string
		input  string
		reason string
		prefix string // bytes passed through before the error
	}{
		{"bad multibulk length", "*x\r\n", "invalid multibulk length", ""},
		{"leading zero", "*01\r\n", "invalid multibulk length", ""},
		{"expected dollar", "*1\r\n+PING\r\n", "expected '$'", ""},
		{"negative bulk", "*1\r\n$-1\r\n", "invalid bulk length", ""},
		{"bulk too long", "*1\r\n$536870913\r\n", "invalid bulk length", ""},
		{"long header", "*1111111111111111111111111\r\n", "invalid multibulk length", ""},
		{"bad second arg", resp("PING") + "*2\r\n$3\r\nGET\r\n:1\r\n", "expected '$'", resp("PING") + "*2\r\n$3\r\nGET\r\n"},
		{"unbalanced quotes", "AUTH \"x\r\n", "unbalanced quotes in request", ""},
		{"long inline auth", "AUTH " + strings.Repeat("x", maxInlineLen) + "\r\n", "too big inline request", ""},
		{"long inline quoted", "\"SET\" " + strings.Repeat("x", maxInlineLen), "too big inline request", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			input := tt.input + resp("AUTH", "after-the-error")
			got := rewrite(t, []byte(input), testUser, 5, 1<<20)
			want := tt.prefix + string(rejectionCommand(testRoute, "protocol error: "+tt.reason)) + closing
			if diff := cmp.Diff(want, string(got)); diff != "" {
				t.Errorf("rewrite(%q) mismatch (-want +got):\n%s", input, diff)
			}
		})
	}
}

func TestCommandReaderLongInline(t *testing.T) {
	long := "SET k " + strings.Repeat("v", 3*inputBufferSize) + "\r\n"
	input := long + "AUTH x\r\n"
	got := rewrite(t, []byte(input), testUser, 4096, 1000)
	want := long + resp("AUTH", testUser, testPassword)
	if string(got) != want {
		t.Errorf("long inline line: got %d bytes, want %d", len(got), len(want))
	}

	// Past Redis's inline limit the server closes the connection, so the rest is dropped.
	tooLong := "SET k " + strings.Repeat("v", maxInlineLen+10)
	got = rewrite(t, []byte(tooLong+"\r\nAUTH x\r\n"), testUser, 4096, 1000)
	if want := tooLong[:maxInlineLen+1]; string(got) != want {
		t.Errorf("inline line over the limit: got %d bytes, want the first %d", len(got), len(want))
	}

	// An inline AUTH up to Redis's limit is rewritten, even when it outgrows the pooled
	// buffer: the line ends at index maxInlineLen.
	longAuth := "AUTH " + strings.Repeat("x", maxInlineLen-6) + "\r\n"
	got = rewrite(t, []byte(longAuth+"PING\r\n"), testUser, 4096, 1000)
	if want := resp("AUTH", testUser, testPassword) + "PING\r\n"; string(got) != want {
		t.Errorf("inline AUTH of %d bytes: got %.80q, want %q", len(longAuth), got, want)
	}

	// A NUL byte hides the line end from Redis, which then reads on to its limit.
	withNull := "SET k v\x00\r\nAUTH x\r\n"
	if got := rewrite(t, []byte(withNull), testUser, 3, 1000); string(got) != withNull {
		t.Errorf("inline line with NUL: got %q, want %q unchanged", got, withNull)
	}
}

func TestCommandReaderLogsProtocolError(t *testing.T) {
	var logs dbtest.LogBuffer
	input := "AUTH " + strings.Repeat("x", maxInlineLen) + "\r\n"
	cr := newCommandReader(&chunkReader{data: []byte(input), size: 4096}, testRoute, testUser, testPassword)
	cr.logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if _, err := io.ReadAll(cr); err != nil {
		t.Fatalf("ReadAll: %v", err)
	}
	got := logs.String()
	if strings.Count(got, "\n") != 1 || !strings.Contains(got, "reason=\"too big inline request\"") {
		t.Errorf("log after an inline command over the limit: got %q, want one line with the reason", got)
	}
	if !strings.Contains(got, "route="+testRoute) {
		t.Errorf("log line %q does not name the route", got)
	}
	if strings.Contains(got, "xxxx") {
		t.Errorf("log line %q contains client input", got)
	}
}

func TestCommandReaderStreamsLargeValue(t *testing.T) {
	const size = 64 << 20
	header := "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$" + fmt.Sprint(size) + "\r\n"
	trailer := "\r\n" + resp("AUTH", "x")
	input := io.MultiReader(strings.NewReader(header),
		io.LimitReader(&cycleReader{data: bytes.Repeat([]byte("abcdefgh"), 512)}, size),
		strings.NewReader(trailer))
	cr := newCommandReader(input, testRoute, testUser, testPassword)

	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	p := make([]byte, 32<<10)
	var total int
	var tail []byte
	for {
		n, err := cr.Read(p)
		total += n
		if n > 0 {
			tail = append(tail[:0], p[max(0, n-200):n]...)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	runtime.ReadMemStats(&after)

	want := len(header) + size + len(resp("AUTH", testUser, testPassword)) + 2
	if total != want {
		t.Errorf("64 MiB SET: got %d bytes, want %d", total, want)
	}
	if !bytes.HasSuffix(tail, []byte(resp("AUTH", testUser, testPassword))) {
		t.Errorf("AUTH after the 64 MiB value was not rewritten: tail %q", tail)
	}
	allocated := after.TotalAlloc - before.TotalAlloc
	t.Logf("64 MiB SET: %d bytes allocated while reading", allocated)
	if allocated > 1<<20 {
		t.Errorf("64 MiB SET allocated %d bytes, want under 1 MiB: the value was buffered", allocated)
	}
}

func TestParseInteger(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true}, {"12", 12, true}, {"-1", -1, true},
		{"9223372036854775807", 9223372036854775807, true},
		{"-9223372036854775808", -9223372036854775808, true},
		{"9223372036854775808", 0, false}, {"", 0, false}, {"-", 0, false},
		{"-0", 0, false}, {"01", 0, false}, {"+1", 0, false}, {"1 ", 0, false},
	}
	for _, tt := range tests {
		got, ok := parseInteger([]byte(tt.in))
		if got != tt.want || ok != tt.ok {
			t.Errorf("parseInteger(%q) = %d, %v; want %d, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestSplitArgs(t *testing.T) {
	tests := []struct {
		in   string
		want []string
		ok   bool
	}{
		{"a b  c", []string{"a", "b", "c"}, true},
		{`"a b" 'c d'`, []string{"a b", "c d"}, true},
		{`"\x41\n\q"`, []string{"A\nq"}, true},
		{`'it\'s'`, []string{"it's"}, true},
		{`a"b c"d`, nil, false},
		{`a"b c" d`, []string{"ab c", "d"}, true},
		{`"open`, nil, false},
		{`'open`, nil, false},
		{"\v x", []string{"x"}, true},
		{"", nil, true},
	}
	for _, tt := range tests {
		args, ok := splitArgs([]byte(tt.in))
		var got []string
		for _, a := range args {
			got = append(got, string(a))
		}
		if ok != tt.ok || !cmp.Equal(got, tt.want) {
			t.Errorf("splitArgs(%q) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestReplyScannerFindsRedirects(t *testing.T) {
	tests := []struct {
		name    string
		replies string
		want    bool
	}{
		{"moved", "+OK\r\n-MOVED 3999 127.0.0.1:6381\r\n", true},
		{"ask", "-ASK 3999 127.0.0.1:6381\r\n", true},
		{"moved in bulk", "$31\r\n-MOVED 3999 127.0.0.1:6381\r\n\r\n", false},
		{"moved in array", "*2\r\n$2\r\nok\r\n-MOVED 1 h:1\r\n", true},
		{"other error", "-MOVEDX 1\r\n-ERR MOVED\r\n-AS\r\n", false},
		{"resp3 types", "%1\r\n+a\r\n=16\r\ntxt:-MOVED 1 a:1\r\n>2\r\n_\r\n#t\r\n,1.5\r\n(12\r\n!3\r\nERR\r\n$-1\r\n", false},
		{"streamed string", "$?\r\n;4\r\n-ASK\r\n;0\r\n-ASK 1 a:1\r\n", true},
		{"after payload", "$5\r\nhello\r\n-MOVED 1 a:1\r\n", true},
	}
	for _, tt := range tests {
		for _, step := range []int{1, 2, 1 << 20} {
			t.Run(fmt.Sprintf("%s/%d", tt.name, step), func(t *testing.T) {
				var found bool
				s := replyScanner{route: testRoute, logger: discardLogger()}
				s.onRedirect = func(string) { found = true }
				b := []byte(tt.replies)
				for len(b) > 0 {
					n := min(step, len(b))
					s.scan(b[:n])
					b = b[n:]
				}
				if found != tt.want {
					t.Errorf("redirect found = %v, want %v", found, tt.want)
				}
				if s.state == replyOff {
					t.Errorf("scanner stopped on valid replies")
				}
			})
		}
	}
}
