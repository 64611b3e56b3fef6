// Package peercred identifies the process on the other end of a local socket.
//
// On Linux, Unix socket peers are read with SO_PEERCRED. That option does not work on TCP
// sockets (Linux reports uid 4294967295 there), so TCP loopback peers are looked up in the
// kernel's socket tables through sock_diag netlink, by the connection's address pair. Other
// platforms return ErrNotImplemented, and a route with a UID allowlist then rejects every
// connection.
package peercred

import (
	"errors"
	"net"
)

// ErrNotImplemented is returned on platforms without a peer lookup.
var ErrNotImplemented = errors.New("peercred: not implemented on this platform")

// ErrUnknownPeer is returned (wrapped) when the peer cannot be identified: a non-loopback TCP
// peer, a socket that is no longer in the kernel's tables, or an unsupported connection type.
var ErrUnknownPeer = errors.New("peercred: peer not found")

// Cred identifies a peer process.
type Cred struct {
	// UID is the peer's user id (the effective UID for Unix sockets, the socket owner for TCP).
	UID uint32
	// PID is the peer's process id, or 0 when it could not be determined. For TCP it is the
	// first process found holding the socket, which may be one of several after a fork.
	PID int
}

// Checker looks up the peer of an accepted connection. Implementations must be safe for
// concurrent use and must not read from or write to the connection.
type Checker interface {
	PeerCred(conn net.Conn) (Cred, error)
}

// Kernel is the Checker backed by the operating system: SO_PEERCRED for Unix sockets and the
// kernel's socket tables for loopback TCP. Only Linux is supported. Elsewhere PeerCred returns
// ErrNotImplemented. The zero value is ready for use and reports PID 0 for TCP peers.
type Kernel struct {
	// ResolvePID makes PeerCred find the PID of a TCP peer by reading the open file
	// descriptors of the processes owned by the peer's UID, starting with the owners of
	// recent peers. That costs more than the UID lookup (about 0.15 ms when the owner is a
	// recent one, several ms for a full scan of /proc), so it is off in the zero value.
	// Unix socket peers always get a PID.
	ResolvePID bool
}

var _ Checker = (*Kernel)(nil)

// PeerCred returns the identity of the process on the other end of conn, which must be a
// *net.UnixConn or a *net.TCPConn with a loopback peer. It neither reads from nor writes to
// conn.
func (k *Kernel) PeerCred(conn net.Conn) (Cred, error) {
	return k.peerCred(conn)
}
