//go:build !linux

package pgauth

import "net"

// bytesPending always reports false off Linux.
// NOTE: off Linux, bytes that an upstream sends after 'S' are caught only when the same read
// returns them. Bytes that arrive later make the TLS handshake fail instead.
func bytesPending(net.Conn) bool { return false }
