package knoxproxy

import (
	"crypto/tls"
	"net"
	"slices"
	"sync"
	"time"
)

// pinDuration is how long a route keeps sending its key share for the group its upstream
// chose. When it ends, one handshake offers every group again, so a server that gains a
// post-quantum group is noticed within this time.
const pinDuration = 10 * time.Minute

// keyShares remembers the classical key exchange group that a route's upstream chose, so that
// later TLS handshakes send their key share for that group.
//
// Go's TLS client sends an X25519MLKEM768 share and an X25519 share. A server without the
// hybrid group then costs the agent a wasted ML-KEM key generation, and a server limited to
// another group also costs a HelloRetryRequest round trip. PostgreSQL 15 accepts only its
// ssl_ecdh_curve, prime256v1 by default, so every connection to it pays both. The
// server's choice is part of the authenticated handshake, and it was made from the full
// offer, so the pin gives up no key exchange the server would have used.
//
// The pinned offer still lists the classical groups that Go ranks below the chosen one, so
// the server can ask for one of those with a HelloRetryRequest. A server that drops them all
// fails one TLS handshake, which drops the pin.
type keyShares struct {
	base *tls.Config

	mu     sync.Mutex
	pinned *tls.Config // base with CurvePreferences from the chosen group on, or nil
	until  time.Time
	now    func() time.Time
}

func newKeyShares(base *tls.Config) *keyShares {
	return &keyShares{base: base, now: time.Now}
}

// config returns the configuration for the next handshake: the pinned one while the pin
// lasts, the route's own configuration otherwise.
func (k *keyShares) config() *tls.Config {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.pinned != nil && k.now().Before(k.until) {
		return k.pinned
	}
	k.pinned = nil
	return k.base
}

// observe records the group that a handshake made with cfg negotiated. Only a handshake that
// offered every group (cfg without CurvePreferences) sets a pin, and only for a classical
// group, since the hybrid groups are already the first share Go sends.
func (k *keyShares) observe(cfg *tls.Config, state tls.ConnectionState) {
	if len(cfg.CurvePreferences) > 0 || !classicalGroup(state.CurveID) {
		return
	}
	pinned := k.base.Clone()
	pinned.CurvePreferences = classicalFrom(state.CurveID)
	k.mu.Lock()
	defer k.mu.Unlock()
	k.pinned = pinned
	k.until = k.now().Add(pinDuration)
}

// failed drops the pin after a TLS handshake that used it failed, because the server may have
// changed its groups, and reports whether there was a pin to drop. The next handshake offers
// every group again.
func (k *keyShares) failed(cfg *tls.Config) bool {
	if len(cfg.CurvePreferences) == 0 {
		return false
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	dropped := k.pinned != nil
	k.pinned = nil
	return dropped
}

// classicalGroups are the groups without a post-quantum part, in the order in which Go's
// TLS client prefers them. Go sends its key share for the first group of CurvePreferences in
// that order, whatever order the list has.
var classicalGroups = []tls.CurveID{tls.X25519, tls.CurveP256, tls.CurveP384, tls.CurveP521}

func classicalGroup(id tls.CurveID) bool {
	return slices.Contains(classicalGroups, id)
}

// classicalFrom returns id and the classical groups that Go ranks below it.
func classicalFrom(id tls.CurveID) []tls.CurveID {
	i := slices.Index(classicalGroups, id)
	return slices.Clone(classicalGroups[i:])
}

// upstreamTLS returns the TLS state of an upstream connection that is a *tls.Conn or wraps
// one behind Unwrap methods.
func upstreamTLS(c net.Conn) (tls.ConnectionState, bool) {
	for {
		switch u := c.(type) {
		case *tls.Conn:
			return u.ConnectionState(), true
		case interface{ Unwrap() net.Conn }:
			c = u.Unwrap()
		default:
			return tls.ConnectionState{}, false
		}
	}
}
