//go:build !linux

package peercred

import "net"

func (k *Kernel) peerCred(net.Conn) (Cred, error) {
	return Cred{}, ErrNotImplemented
}
