package knoxproxy

import "bufio"

// Reasons for rejecting a client by its first bytes; they are also log and metric labels.
const (
	reasonHTTP     = "http_request"
	reasonTLSHello = "tls_client_hello"
	reasonNotRedis = "not_redis"
)

// httpMethods are request-line prefixes of HTTP/1.x methods. A browser page that points
// fetch() or a form at the loopback port sends one of these first.
var httpMethods = [][]byte{
	[]byte("GET "), []byte("POST "), []byte("PUT "), []byte("HEAD "), []byte("DELETE "),
	[]byte("OPTIONS "), []byte("PATCH "), []byte("CONNECT "), []byte("TRACE "),
}

// sniff reads the client's first bytes without consuming them and returns a rejection
// reason when they are an HTTP request line or a TLS handshake record, and "" otherwise.
//
// For Redis, whose inline commands are plain words, an HTTP method only counts when the next
// token looks like a request target ("/" or "http"), since "GET key" is a valid command.
//
// A Redis client never starts with a zero byte, while PostgreSQL's first message does,
// because it starts with a length below 2^24. Redis would read those bytes as the start of
// an inline command and wait for its end, so psql pointed at a Redis route would hang.
func sniff(r *bufio.Reader, redisInline bool) (string, error) {
	first, err := r.Peek(1)
	if err != nil {
		return "", err
	}
	if redisInline && first[0] == 0 {
		return reasonNotRedis, nil
	}

	// A TLS record starts with content type 22 (handshake) and a record version. Current
	// clients put 3.1 or 3.3 there in their ClientHello (RFC 8446 section 5.1). Redis starts
	// with '*' or a letter, and PostgreSQL with a big-endian length far below 0x16030000.
	// MongoDB starts with a little-endian length, and a 790-byte first message begins with
	// 0x16 0x03 0x00, so only versions 3.1 to 3.4 count.
	// NOTE: a client that sends record version 3.0, which RFC 5246 appendix E.1 still
	// allowed, is not caught here and fails later in the protocol's handshake.
	if first[0] == 0x16 {
		ok, err := hasPrefix(r, []byte{0x16, 0x03})
		if !ok {
			return "", err
		}
		head, err := r.Peek(3)
		if err != nil {
			return "", err
		}
		if minor := head[2]; minor >= 1 && minor <= 4 {
			return reasonTLSHello, nil
		}
		return "", nil
	}

	for _, m := range httpMethods {
		if first[0] != m[0] {
			continue
		}
		ok, err := hasPrefix(r, m)
		if err != nil {
			return "", err
		}
		if !ok {
			continue
		}
		if !redisInline {
			return reasonHTTP, nil
		}
		head, err := r.Peek(len(m) + 1)
		if err != nil {
			return "", err
		}
		if target := head[len(m)]; target == '/' || target == 'h' || target == 'H' {
			return reasonHTTP, nil
		}
		return "", nil
	}
	return "", nil
}

// hasPrefix reports whether the stream starts with prefix, reading only as many bytes as it
// takes to find the first difference, so a short message that differs early is never
// waited on.
func hasPrefix(r *bufio.Reader, prefix []byte) (bool, error) {
	for n := 1; n <= len(prefix); n++ {
		head, err := r.Peek(n)
		if err != nil {
			return false, err
		}
		if head[n-1] != prefix[n-1] {
			return false, nil
		}
	}
	return true, nil
}
