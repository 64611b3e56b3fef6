//go:build !linux

package pgauth

import "net"

// bytesPending always reports false off Linux.
// NOTE: there, bytes that an upstream sends after 'S' are caught only when the same read
// returns them; later ones make the TLS handshake fail instead.
func bytesPending(net.Conn) bool { return false }
