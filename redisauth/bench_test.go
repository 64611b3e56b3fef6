package redisauth

import (
	"fmt"
	"strings"
	"testing"
)

// cycleReader returns data over and over, so a benchmark reads without allocating.
type cycleReader struct {
	data []byte
	pos  int
}

func (r *cycleReader) Read(p []byte) (int, error) {
	n := copy(p, r.data[r.pos:])
	r.pos = (r.pos + n) % len(r.data)
	return n, nil
}

// benchmarkCommands measures the reader on a stream of commands: one op is one command.
func benchmarkCommands(b *testing.B, commands string, perStream int) {
	cr := newCommandReader(&cycleReader{data: []byte(commands)}, testRoute, testUser, testPassword)
	p := make([]byte, 32<<10)
	bytesPerCommand := len(commands) / perStream
	b.SetBytes(int64(bytesPerCommand))
	b.ReportAllocs()
	b.ResetTimer()
	for total := 0; total < b.N*bytesPerCommand; {
		n, err := cr.Read(p)
		if err != nil {
			b.Fatal(err)
		}
		total += n
	}
}

func BenchmarkCommandReader(b *testing.B) {
	b.Run("set-get", func(b *testing.B) {
		benchmarkCommands(b, resp("SET", "key:1234", "value-0123456789")+resp("GET", "key:1234"), 2)
	})
	b.Run("inline", func(b *testing.B) {
		benchmarkCommands(b, "SET key:1234 value-0123456789\r\nGET key:1234\r\n", 2)
	})
	b.Run("auth", func(b *testing.B) {
		benchmarkCommands(b, resp("AUTH", "dummy")+resp("HELLO", "3", "AUTH", "u", "p"), 2)
	})
	for _, size := range []int{16 << 10, 1 << 20} {
		b.Run(fmt.Sprintf("set-%dKiB", size>>10), func(b *testing.B) {
			benchmarkCommands(b, resp("SET", "k", strings.Repeat("v", size)), 1)
		})
	}
}

func BenchmarkReplyScanner(b *testing.B) {
	replies := []byte("+OK\r\n$16\r\nvalue-0123456789\r\n:42\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n-ERR no such key\r\n")
	s := replyScanner{logger: discardLogger()}
	b.SetBytes(int64(len(replies)))
	b.ReportAllocs()
	for b.Loop() {
		s.scan(replies)
	}
}

func TestCommandReaderAllocatesNothing(t *testing.T) {
	tests := []struct {
		name     string
		commands string
	}{
		{"array", resp("SET", "key", "value") + resp("GET", "key")},
		{"inline", "SET key value\r\nGET key\r\n"},
		{"auth and hello", resp("AUTH", "dummy") + resp("HELLO", "3", "AUTH", "u", "p")},
		{"large value", resp("SET", "k", strings.Repeat("v", 100<<10))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cr := newCommandReader(&cycleReader{data: []byte(tt.commands)}, testRoute, testUser, testPassword)
			p := make([]byte, 4096)
			cr.Read(p) // the first rewrite may grow the output buffer once
			if allocs := testing.AllocsPerRun(1000, func() { cr.Read(p) }); allocs != 0 {
				t.Errorf("Read allocated %v times per call, want 0", allocs)
			}
		})
	}
}
