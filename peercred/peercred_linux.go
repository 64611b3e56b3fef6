//go:build linux

package peercred

import (
	"errors"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// maxUnwrap bounds how many wrapping layers (NetConn methods) peerCred looks through.
const maxUnwrap = 4

// socketInfo is the kernel's record of the peer's TCP socket.
type socketInfo struct {
	uid   uint32
	inode uint64
}

// errSocketNotFound means the kernel has no socket with the requested address pair.
var errSocketNotFound = errors.New("no socket with this address pair")

func (k *Kernel) peerCred(conn net.Conn) (Cred, error) {
	// Look through wrappers such as *tls.Conn to the accepted socket.
	for range maxUnwrap {
		wrapper, ok := conn.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		conn = wrapper.NetConn()
	}
	switch c := conn.(type) {
	case *net.UnixConn:
		return unixPeerCred(c)
	case *net.TCPConn:
		return k.tcpPeerCred(c)
	default:
		return Cred{}, fmt.Errorf("%w: unsupported connection type %T", ErrUnknownPeer, conn)
	}
}

// unixPeerCred reads SO_PEERCRED, which the kernel records when the peer calls connect.
func unixPeerCred(c *net.UnixConn) (Cred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return Cred{}, fmt.Errorf("%w: unix socket: %w", ErrUnknownPeer, err)
	}
	var ucred *unix.Ucred
	var sockErr error
	err = raw.Control(func(fd uintptr) {
		ucred, sockErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	if err == nil {
		err = sockErr
	}
	if err != nil {
		return Cred{}, fmt.Errorf("%w: unix socket: getsockopt SO_PEERCRED: %w", ErrUnknownPeer, err)
	}
	// PID is 0 when the peer is in a PID namespace that this process cannot see.
	return Cred{UID: ucred.Uid, PID: int(ucred.Pid)}, nil
}

// tcpPeerCred finds the peer's socket in the kernel's TCP table. The peer's socket has the
// client address as its local end and the listener address as its remote end.
func (k *Kernel) tcpPeerCred(c *net.TCPConn) (Cred, error) {
	local, _ := c.LocalAddr().(*net.TCPAddr)
	remote, _ := c.RemoteAddr().(*net.TCPAddr)
	if local == nil || remote == nil {
		return Cred{}, fmt.Errorf("%w: tcp connection without addresses", ErrUnknownPeer)
	}
	// A closed conn still reports its addresses, but its peer may be gone or reused.
	if err := checkOpen(c); err != nil {
		return Cred{}, fmt.Errorf("%w: tcp peer %s: %w", ErrUnknownPeer, remote, err)
	}
	return k.tcpAddrPeerCred(local, remote)
}

// tcpAddrPeerCred looks up the peer of a connection from local to remote.
func (k *Kernel) tcpAddrPeerCred(local, remote *net.TCPAddr) (Cred, error) {
	if !remote.IP.IsLoopback() {
		return Cred{}, fmt.Errorf("%w: tcp peer %s is not on a loopback address", ErrUnknownPeer, remote)
	}
	sock, err := lookupTCP(remote, local)
	if err != nil {
		return Cred{}, fmt.Errorf("%w: tcp peer %s: %w", ErrUnknownPeer, remote, err)
	}
	cred := Cred{UID: sock.uid}
	if k.ResolvePID {
		// A PID that cannot be found is reported as 0; the UID is what callers check.
		cred.PID, _ = findSocketOwner(sock.uid, sock.inode)
	}
	return cred, nil
}

func checkOpen(c *net.TCPConn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	return raw.Control(func(uintptr) {})
}

// lookupTCP finds the socket whose local end is client and remote end is server, through
// sock_diag netlink or, where netlink is not permitted, /proc/net/tcp and tcp6.
//
// An IPv4 client may hold an AF_INET socket or an AF_INET6 socket with IPv4-mapped
// addresses (a dual-stack socket connecting to 127.0.0.1), so both families are tried.
func lookupTCP(client, server *net.TCPAddr) (socketInfo, error) {
	families := []uint8{unix.AF_INET6}
	if client.IP.To4() != nil && server.IP.To4() != nil {
		families = []uint8{unix.AF_INET, unix.AF_INET6}
	}
	for _, family := range families {
		sock, err := sockDiagLookup(family, client, server)
		switch {
		case err == nil:
			return sock, nil
		case errors.Is(err, errNetlinkUnavailable):
			return procNetLookup(client, server)
		case !errors.Is(err, errSocketNotFound):
			return socketInfo{}, err
		}
	}
	return socketInfo{}, errSocketNotFound
}
