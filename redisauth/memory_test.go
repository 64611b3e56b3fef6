package redisauth

import (
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/knoxcall/dbproxy/internal/dbtest"
	"github.com/knoxcall/dbproxy/internal/splice"
)

// idleReaderBudget is the most heap that the command reader of an idle session may hold. The
// reader keeps no input buffer while it waits, so what stays is its fixed state: the struct
// and the pre-encoded AUTH, HELLO and RESET replacements, a few hundred bytes.
const idleReaderBudget = 1 << 10

// idleHeapPerSession returns the heap bytes held per session by n goroutines that each wait
// in Read on wrap(conn), where conn is the accepting end of an idle loopback connection. Each
// session first passes one PING through, so that the reader has used its buffer once. The
// read buffers, of the size the splice uses while it waits, are allocated before the first
// measurement and do not count.
func idleHeapPerSession(t *testing.T, n int, wrap func(net.Conn) io.Reader) float64 {
	t.Helper()
	conns := make([]net.Conn, n)
	bufs := make([][]byte, n)
	for i := range n {
		dialed, accepted := dbtest.TCPPair(t)
		if _, err := io.WriteString(dialed, "PING\r\n"); err != nil {
			t.Fatal(err)
		}
		conns[i], bufs[i] = accepted, make([]byte, splice.SmallBufferSize)
	}
	before := liveHeap()

	var ready, done sync.WaitGroup
	ready.Add(n)
	done.Add(n)
	for i := range n {
		go func() {
			defer done.Done()
			r := wrap(conns[i])
			_, err := r.Read(bufs[i])
			ready.Done()
			if err == nil {
				r.Read(bufs[i]) // waits until the connection is closed
			}
		}()
	}
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
		done.Wait()
	})
	ready.Wait()

	// Give every goroutine time to enter its second Read, and keep the lowest sample.
	var minHeap int64
	for i := range 5 {
		time.Sleep(20 * time.Millisecond)
		if h := int64(liveHeap() - before); i == 0 || h < minHeap {
			minHeap = h
		}
	}
	return float64(minHeap) / float64(n)
}

// liveHeap returns the bytes of live heap objects after a full collection. The second
// collection also empties the sync.Pool victim caches, whose buffers no session holds.
func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

func TestIdleSessionReaderMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 400 loopback connections")
	}
	const sessions = 200
	plain := idleHeapPerSession(t, sessions, func(c net.Conn) io.Reader { return c })
	withReader := idleHeapPerSession(t, sessions, func(c net.Conn) io.Reader {
		return newCommandReader(c, testRoute, testUser, testPassword)
	})
	reader := withReader - plain
	t.Logf("heap per idle session: %.0f bytes waiting in net.Conn.Read, %.0f bytes waiting in commandReader.Read, %.0f bytes for the reader",
		plain, withReader, reader)
	if reader > idleReaderBudget {
		t.Errorf("the command reader of an idle session holds %.0f bytes of heap, want at most %d", reader, idleReaderBudget)
	}
}
