// Package splice copies bytes both ways between two connections until both directions end.
package splice

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/knoxcall/dbproxy/internal/handshake"
)

// Buffer sizes. A direction that waits for data holds a small buffer, so an idle session
// costs little memory. A read that fills it switches to a large buffer until reads come back
// short again. 32 KiB fits two full TLS records (16 KiB of plaintext each, RFC 8446
// section 5.1).
const (
	SmallBufferSize = 2 << 10
	LargeBufferSize = 32 << 10
)

var (
	smallBuffers = sync.Pool{New: func() any { b := make([]byte, SmallBufferSize); return &b }}
	largeBuffers = sync.Pool{New: func() any { b := make([]byte, LargeBufferSize); return &b }}
)

// A ConnError is a failed read or write on one of the connections given to Run. Its text
// is the underlying error's.
type ConnError struct {
	// Conn is the connection that failed, as it was passed to Run.
	Conn net.Conn
	Err  error
}

func (e *ConnError) Error() string { return e.Err.Error() }
func (e *ConnError) Unwrap() error { return e.Err }

// PeerGone reports whether err is a reset or broken pipe on c: the peer on c closed its
// connection abruptly, as many clients do when they exit with unread data or close with
// SO_LINGER set to zero.
func PeerGone(err error, c net.Conn) bool {
	var ce *ConnError
	if !errors.As(err, &ce) || ce.Conn != c {
		return false
	}
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// Run copies a to b and b to a at the same time. When one side ends its stream cleanly, Run
// half-closes the other side's writing direction and keeps copying the opposite way, so a
// peer that shuts down its output still receives the rest of the replies. When either
// direction fails, Run closes both connections so that the other direction ends too. It
// returns the bytes copied each way and the first error other than a clean end of stream,
// as a *ConnError naming the connection that failed. An error caused by that close is not
// reported. The caller closes both connections afterwards.
func Run(a, b net.Conn) (aToB, bToA int64, err error) {
	return RunCounted(a, b, nil, nil)
}

// RunCounted is Run that also adds the bytes of each write to aToB and bToA as they
// happen, for figures that must move while the connections stay open. Nil counters are
// skipped.
func RunCounted(a, b net.Conn, countAToB, countBToA *atomic.Int64) (aToB, bToA int64, err error) {
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
		// cleanEnd is set once one direction reached a clean end of stream.
		cleanEnd bool
	)
	record := func(e error) {
		mu.Lock()
		defer mu.Unlock()
		if e == nil {
			cleanEnd = true
			return
		}
		// After one side ended its stream, a reset or broken pipe is how the other side
		// closing at the same time usually shows, e.g. a server that exits on the client's
		// quit message and receives the TLS close_notify a moment too late.
		if cleanEnd && (errors.Is(e, syscall.ECONNRESET) || errors.Is(e, syscall.EPIPE)) {
			return
		}
		if firstErr == nil && !errors.Is(e, net.ErrClosed) {
			firstErr = e
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		var e error
		bToA, e = pump(a, b, countBToA)
		record(e)
		finish(a, b, e)
	}()
	var e error
	aToB, e = pump(b, a, countAToB)
	record(e)
	finish(b, a, e)
	wg.Wait()
	return aToB, bToA, firstErr
}

// finish ends the direction that wrote to dst: a half-close after a clean end of stream, a
// full close of both connections after an error.
func finish(dst, src net.Conn, err error) {
	if err == nil && handshake.CloseWrite(dst) == nil {
		return
	}
	dst.Close()
	src.Close()
}

// pump copies src to dst until src ends; a clean end of stream returns a nil error. It does
// not use io.Copy, because net.TCPConn's WriteTo would bypass the pooled buffers and
// allocate a buffer of its own on every call.
func pump(dst, src net.Conn, counter *atomic.Int64) (int64, error) {
	small := smallBuffers.Get().(*[]byte)
	defer smallBuffers.Put(small)
	var large *[]byte
	defer func() {
		if large != nil {
			largeBuffers.Put(large)
		}
	}()

	buf := *small
	var total int64
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			// Count before writing, so that a caller that has read the
			// peer's reply to these bytes also sees them counted.
			if counter != nil {
				counter.Add(int64(n))
			}
			w, werr := dst.Write(buf[:n])
			total += int64(w)
			if counter != nil && w < n {
				counter.Add(int64(w - n))
			}
			if werr != nil {
				return total, &ConnError{Conn: dst, Err: werr}
			}
		}
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			return total, &ConnError{Conn: src, Err: rerr}
		}

		// Grow when a read filled the buffer; shrink back when the stream slows down.
		switch {
		case n == len(buf) && large == nil:
			large = largeBuffers.Get().(*[]byte)
			buf = *large
		case large != nil && n < SmallBufferSize:
			largeBuffers.Put(large)
			large = nil
			buf = *small
		}
	}
}
