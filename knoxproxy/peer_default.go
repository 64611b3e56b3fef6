package knoxproxy

import (
	"net"

	"github.com/knoxcall/dbproxy/peercred"
)

// defaultPeerChecker returns the platform's peer checker.
// TODO: use the Linux implementation once peercred has it.
func defaultPeerChecker() peercred.Checker { return noPeerChecker{} }

type noPeerChecker struct{}

func (noPeerChecker) PeerCred(net.Conn) (peercred.Cred, error) {
	return peercred.Cred{}, peercred.ErrNotImplemented
}
