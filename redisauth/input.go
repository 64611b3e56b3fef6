package redisauth

import (
	"errors"
	"io"
	"sync"
)

const (
	// inputBufferSize is the size of the pooled buffers that hold client input while a
	// command header is parsed. 16 KiB is the size of Redis's own read buffer
	// (PROTO_IOBUF_LEN in server.h), so a read takes in as much as the server's does.
	inputBufferSize = 16 * 1024
	// maxEmptyReads bounds the reads in a row that return no bytes and no error before the
	// reader reports io.ErrNoProgress, as bufio.Reader does.
	maxEmptyReads = 100
)

var inputBuffers = sync.Pool{New: func() any { b := make([]byte, inputBufferSize); return &b }}

var errInputFull = errors.New("input buffer full")

// clientInput buffers client input that the command reader has looked at but not yet
// returned. It holds a pooled buffer only while it contains bytes. Before it waits for more
// input with nothing buffered, it returns its buffer to the pool and reads into the caller's
// buffer (scratch) instead, so an idle session holds no buffer of its own.
type clientInput struct {
	src     io.Reader
	pooled  *[]byte // the buffer from inputBuffers in use, or nil
	buf     []byte  // *pooled, a larger buffer for a long inline command, or nil
	r, w    int     // the buffered bytes are buf[r:w]
	err     error   // a read error to report after the bytes read with it
	scratch []byte  // the unused part of the caller's buffer during a Read, else nil
}

// buffered returns the buffered bytes. They stay valid until the next fill.
func (in *clientInput) buffered() []byte { return in.buf[in.r:in.w] }

// len returns the number of buffered bytes.
func (in *clientInput) len() int { return in.w - in.r }

// discard drops the first n buffered bytes.
func (in *clientInput) discard(n int) {
	in.r += n
	if in.r == in.w {
		in.r, in.w = 0, 0
	}
}

// fill reads at least one more byte into the buffer. When the buffer is full it moves the
// buffered bytes to its start, or else grows it to capacity bytes.
func (in *clientInput) fill(capacity int) error {
	if in.len() == 0 {
		return in.fillEmpty()
	}
	if in.w == len(in.buf) {
		switch {
		case in.r > 0:
			in.w = copy(in.buf, in.buf[in.r:in.w])
			in.r = 0
		case len(in.buf) < capacity:
			grown := make([]byte, capacity)
			n := copy(grown, in.buf[:in.w])
			in.release()
			in.buf, in.w = grown, n
		default:
			return errInputFull
		}
	}
	n, err := in.read(in.buf[in.w:])
	in.w += n
	return in.keep(n, err)
}

// fillEmpty reads into the empty buffer. The wait for input happens in scratch, with the
// buffer back in the pool, and only the bytes that arrive are copied into a pooled buffer.
func (in *clientInput) fillEmpty() error {
	in.release()
	if len(in.scratch) == 0 {
		in.acquire()
		n, err := in.read(in.buf)
		in.w = n
		return in.keep(n, err)
	}
	n, err := in.read(in.scratch[:min(len(in.scratch), inputBufferSize)])
	if n > 0 {
		in.acquire()
		in.w = copy(in.buf, in.scratch[:n])
	}
	return in.keep(n, err)
}

// keep returns err when no bytes came with it; otherwise it saves err for the next read.
func (in *clientInput) keep(n int, err error) error {
	if n == 0 {
		return err
	}
	in.err = err
	return nil
}

// read reads from the source into p, which must not be empty. It returns a saved error
// first, and io.ErrNoProgress after maxEmptyReads reads that return nothing.
func (in *clientInput) read(p []byte) (int, error) {
	if err := in.err; err != nil {
		in.err = nil
		return 0, err
	}
	for range maxEmptyReads {
		n, err := in.src.Read(p)
		if n > 0 || err != nil {
			return n, err
		}
	}
	return 0, io.ErrNoProgress
}

func (in *clientInput) acquire() {
	in.pooled = inputBuffers.Get().(*[]byte)
	in.buf = *in.pooled
	in.r, in.w = 0, 0
}

// release returns a pooled buffer to the pool and drops a grown one.
func (in *clientInput) release() {
	if in.pooled != nil {
		inputBuffers.Put(in.pooled)
		in.pooled = nil
	}
	in.buf, in.r, in.w = nil, 0, 0
}
