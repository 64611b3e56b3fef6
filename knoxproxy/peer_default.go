package knoxproxy

import (
	"net"

	"github.com/knoxcall/dbproxy/peercred"
)

// defaultPeerChecker returns the platform's peer checker. It finds the PID of TCP peers
// only for the log line of a rejected peer, since the /proc scan that takes costs
// milliseconds per connection.
func defaultPeerChecker() peercred.Checker { return &peercred.Kernel{} }

// rejectedPeerPID returns the PID of a rejected TCP peer for its log line, looking it up
// when checker skipped that for speed.
func rejectedPeerPID(checker peercred.Checker, conn net.Conn, cred peercred.Cred) int {
	if cred.PID != 0 {
		return cred.PID
	}
	k, ok := checker.(*peercred.Kernel)
	if !ok || k.ResolvePID {
		return 0
	}
	withPID := peercred.Kernel{ResolvePID: true}
	full, err := withPID.PeerCred(conn)
	if err != nil {
		return 0
	}
	return full.PID
}
