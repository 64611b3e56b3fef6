//go:build linux

package peercred

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Sizes of the sock_diag structures, from the Linux UAPI headers linux/netlink.h and
// linux/inet_diag.h. They have not changed since inet_diag_req_v2 appeared in Linux 3.3.
const (
	sizeofNlmsghdr      = 16 // struct nlmsghdr
	sizeofInetDiagReqV2 = 56 // struct inet_diag_req_v2
	sizeofInetDiagMsg   = 72 // struct inet_diag_msg
	sizeofNlmsgerr      = 4  // the errno that starts struct nlmsgerr
)

// TCP states from include/net/tcp_states.h in which the socket's owner is not a process
// holding a connected socket.
const (
	tcpStateSynRecv    = 3
	tcpStateTimeWait   = 6
	tcpStateListen     = 10
	tcpStateNewSynRecv = 12
)

const (
	// inetDiagNoCookie makes the kernel skip the check of the socket cookie (INET_DIAG_NOCOOKIE).
	inetDiagNoCookie = ^uint32(0)
	// replyBufferSize fits one inet_diag_msg with its attributes several times over;
	// an exact lookup returns a single message.
	replyBufferSize = 4096
	// maxReplyReads bounds the datagrams read while waiting for the reply to one request.
	maxReplyReads = 8
)

// errNetlinkUnavailable means sock_diag cannot be used here, for example inside a sandbox
// that forbids netlink sockets.
var errNetlinkUnavailable = errors.New("sock_diag netlink unavailable")

var netlinkSequence atomic.Uint32

// sockDiagLookup sends one SOCK_DIAG_BY_FAMILY request for the exact socket with local end
// src and remote end dst, and returns its owner UID and inode.
func sockDiagLookup(family uint8, src, dst *net.TCPAddr) (socketInfo, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return socketInfo{}, netlinkError("socket", err)
	}
	defer unix.Close(fd)
	// The kernel replies at once, so the timeout only guards against a lost reply.
	timeout := unix.Timeval{Sec: 2}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &timeout); err != nil {
		return socketInfo{}, fmt.Errorf("sock_diag: set receive timeout: %w", err)
	}

	seq := netlinkSequence.Add(1)
	request := encodeDiagRequest(seq, family, src, dst)
	if err := unix.Sendto(fd, request, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return socketInfo{}, netlinkError("send", err)
	}

	var buf [replyBufferSize]byte
	for range maxReplyReads {
		n, _, err := unix.Recvfrom(fd, buf[:], 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return socketInfo{}, fmt.Errorf("sock_diag: receive: %w", err)
		}
		sock, done, err := parseDiagReply(buf[:n], seq, src, dst)
		if done {
			return sock, err
		}
	}
	return socketInfo{}, errors.New("sock_diag: no reply to the request")
}

func netlinkError(step string, err error) error {
	switch {
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES),
		errors.Is(err, unix.EPROTONOSUPPORT), errors.Is(err, unix.EAFNOSUPPORT):
		return fmt.Errorf("sock_diag: %s: %w: %w", step, errNetlinkUnavailable, err)
	default:
		return fmt.Errorf("sock_diag: %s: %w", step, err)
	}
}

// encodeDiagRequest builds a struct nlmsghdr followed by a struct inet_diag_req_v2.
// Netlink fields are in host byte order, ports and addresses in network byte order.
func encodeDiagRequest(seq uint32, family uint8, src, dst *net.TCPAddr) []byte {
	b := make([]byte, sizeofNlmsghdr+sizeofInetDiagReqV2)
	host := binary.NativeEndian

	// struct nlmsghdr
	host.PutUint32(b[0:4], uint32(len(b)))
	host.PutUint16(b[4:6], unix.SOCK_DIAG_BY_FAMILY)
	host.PutUint16(b[6:8], unix.NLM_F_REQUEST)
	host.PutUint32(b[8:12], seq)
	// nlmsg_pid stays 0: the kernel fills in the sender.

	// struct inet_diag_req_v2
	r := b[sizeofNlmsghdr:]
	r[0] = family
	r[1] = unix.IPPROTO_TCP
	host.PutUint32(r[4:8], ^uint32(0)) // idiag_states: any state

	// struct inet_diag_sockid
	id := r[8:]
	binary.BigEndian.PutUint16(id[0:2], uint16(src.Port))
	binary.BigEndian.PutUint16(id[2:4], uint16(dst.Port))
	putDiagAddr(id[4:20], family, src.IP)
	putDiagAddr(id[20:36], family, dst.IP)
	// id[36:40] is idiag_if, 0 for any interface.
	host.PutUint32(id[40:44], inetDiagNoCookie)
	host.PutUint32(id[44:48], inetDiagNoCookie)
	return b
}

// putDiagAddr writes ip into a 16-byte idiag_src or idiag_dst field: 4 bytes for AF_INET,
// the IPv6 (or IPv4-mapped) form for AF_INET6.
func putDiagAddr(field []byte, family uint8, ip net.IP) {
	if family == unix.AF_INET {
		copy(field, ip.To4())
		return
	}
	copy(field, ip.To16())
}

// parseDiagReply parses one datagram of replies to request seq. done is false when the
// datagram held nothing for this request. Every length comes from the kernel and is checked
// against the datagram before use.
func parseDiagReply(b []byte, seq uint32, src, dst *net.TCPAddr) (sock socketInfo, done bool, err error) {
	host := binary.NativeEndian
	for len(b) >= sizeofNlmsghdr {
		msgLen := int(host.Uint32(b[0:4]))
		msgType := host.Uint16(b[4:6])
		msgSeq := host.Uint32(b[8:12])
		if msgLen < sizeofNlmsghdr || msgLen > len(b) {
			return socketInfo{}, true, fmt.Errorf("sock_diag: invalid message length %d in a %d-byte reply", msgLen, len(b))
		}
		body := b[sizeofNlmsghdr:msgLen]
		if next := (msgLen + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1); next < len(b) {
			b = b[next:]
		} else {
			b = nil
		}
		if msgSeq != seq {
			continue
		}

		switch msgType {
		case unix.NLMSG_ERROR:
			if len(body) < sizeofNlmsgerr {
				return socketInfo{}, true, fmt.Errorf("sock_diag: error message of %d bytes is too short", len(body))
			}
			errno := -int32(host.Uint32(body[0:4]))
			switch {
			case errno == 0:
				continue // an acknowledgement
			case unix.Errno(errno) == unix.ENOENT:
				return socketInfo{}, true, errSocketNotFound
			default:
				return socketInfo{}, true, netlinkError("request", unix.Errno(errno))
			}
		case unix.NLMSG_DONE:
			return socketInfo{}, true, errSocketNotFound
		case unix.SOCK_DIAG_BY_FAMILY:
			sock, err := parseDiagMsg(body, src, dst)
			return sock, true, err
		}
	}
	return socketInfo{}, false, nil
}

// parseDiagMsg reads a struct inet_diag_msg and checks that it describes the requested
// socket held by a process. The exact lookup can also return a listener or a TIME_WAIT
// socket, whose UID does not identify the peer.
func parseDiagMsg(m []byte, src, dst *net.TCPAddr) (socketInfo, error) {
	if len(m) < sizeofInetDiagMsg {
		return socketInfo{}, fmt.Errorf("sock_diag: inet_diag_msg of %d bytes is too short", len(m))
	}
	state := m[1]
	sport := binary.BigEndian.Uint16(m[4:6])
	dport := binary.BigEndian.Uint16(m[6:8])
	uid := binary.NativeEndian.Uint32(m[64:68])
	inode := binary.NativeEndian.Uint32(m[68:72])

	if int(sport) != src.Port || int(dport) != dst.Port {
		return socketInfo{}, fmt.Errorf("sock_diag: reply for ports %d->%d does not match the request %d->%d", sport, dport, src.Port, dst.Port)
	}
	switch state {
	case tcpStateListen, tcpStateTimeWait, tcpStateSynRecv, tcpStateNewSynRecv:
		return socketInfo{}, fmt.Errorf("%w: socket in TCP state %d", errSocketNotFound, state)
	}
	if inode == 0 {
		// The kernel reports inode 0 for an orphaned socket that no process holds anymore.
		return socketInfo{}, fmt.Errorf("%w: the peer closed its socket", errSocketNotFound)
	}
	return socketInfo{uid: uid, inode: uint64(inode)}, nil
}
