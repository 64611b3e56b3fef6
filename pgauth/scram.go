package pgauth

import (
	"container/list"
	"crypto/hmac"
	"crypto/md5"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"sync"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"

	"github.com/knoxcall/dbproxy/internal/handshake"
)

// SASL mechanism names, as PostgreSQL lists them in AuthenticationSASL.
const (
	mechSCRAM     = "SCRAM-SHA-256"
	mechSCRAMPlus = "SCRAM-SHA-256-PLUS"
)

// maxSCRAMClients bounds the SCRAM clients kept across connections: one per distinct user
// name and password, so a handful per route. The least recently used client is dropped.
const maxSCRAMClients = 256

// scramClients caches one scram.Client per credential. A scram.Client keeps the salted
// password (PBKDF2 with the server's salt and iteration count, 4096 by default) so that only
// the first login with a credential pays for the derivation.
var scramClients = newSCRAMCache(maxSCRAMClients)

type scramCache struct {
	mu      sync.Mutex
	max     int
	hmacKey []byte
	order   *list.List // of *scramEntry, most recently used first
	entries map[[sha256.Size]byte]*list.Element
}

type scramEntry struct {
	key    [sha256.Size]byte
	client *scram.Client
}

func newSCRAMCache(max int) *scramCache {
	// The map key is an HMAC under a random per-process key, so memory holds no plain hash
	// of a password that could be checked against guesses offline.
	key := make([]byte, 32)
	rand.Read(key)
	return &scramCache{max: max, hmacKey: key, order: list.New(), entries: make(map[[sha256.Size]byte]*list.Element)}
}

// client returns the cached scram.Client for user and password, creating it if needed.
func (c *scramCache) client(user, password string) (*scram.Client, error) {
	mac := hmac.New(sha256.New, c.hmacKey)
	mac.Write([]byte(user))
	mac.Write([]byte{0})
	mac.Write([]byte(password))
	var key [sha256.Size]byte
	mac.Sum(key[:0])

	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.entries[key]; ok {
		c.order.MoveToFront(e)
		return e.Value.(*scramEntry).client, nil
	}
	client, err := newSCRAMClient(password)
	if err != nil {
		return nil, err
	}
	c.entries[key] = c.order.PushFront(&scramEntry{key: key, client: client})
	for c.order.Len() > c.max {
		oldest := c.order.Back()
		c.order.Remove(oldest)
		delete(c.entries, oldest.Value.(*scramEntry).key)
	}
	return client, nil
}

func (c *scramCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}

// newSCRAMClient creates a SCRAM-SHA-256 client. The user name in the SCRAM messages is
// empty, as libpq sends it, because PostgreSQL takes the user from the StartupMessage and
// ignores this one. A password that SASLprep rejects is used as raw bytes, which is what
// PostgreSQL does when it stores such a password.
func newSCRAMClient(password string) (*scram.Client, error) {
	client, err := scram.SHA256.NewClient("", password, "")
	if err != nil {
		client, err = scram.SHA256.NewClientUnprepped("", password, "")
	}
	if err != nil {
		// The library's error does not contain the password.
		return nil, fmt.Errorf("create SCRAM client: %w", err)
	}
	return client, nil
}

// startSCRAM picks a mechanism from AuthenticationSASL and sends SASLInitialResponse.
func (l *upstreamLogin) startSCRAM(body []byte) error {
	var req pgproto3.AuthenticationSASL
	if err := req.Decode(body); err != nil {
		return upstreamProtocolError("decode AuthenticationSASL: %v", err)
	}
	if l.scram != nil {
		return upstreamProtocolError("upstream restarted SASL authentication")
	}
	client, err := scramClients.client(l.creds.Username, l.creds.Password)
	if err != nil {
		return err
	}

	switch {
	case slices.Contains(req.AuthMechanisms, mechSCRAMPlus):
		state := l.w.ConnectionState()
		binding, err := scram.NewTLSServerEndpointBinding(&state)
		if err == nil {
			l.method = mechSCRAMPlus
			l.scram = client.NewConversationWithChannelBinding(binding)
			break
		}
		// NOTE: a certificate whose signature has no single hash (Ed25519) has no
		// tls-server-end-point data; PostgreSQL then cannot bind either, so plain
		// SCRAM-SHA-256 with the "n" flag is what the server accepts.
		l.log.DebugContext(l.ctx, "no channel binding data, using SCRAM without binding", "reason", err.Error())
		if !slices.Contains(req.AuthMechanisms, mechSCRAM) {
			return fmt.Errorf("channel binding: %w: %w", err, handshake.ErrUpstreamProtocol)
		}
		l.method = mechSCRAM
		l.scram = client.NewConversation()
	case slices.Contains(req.AuthMechanisms, mechSCRAM):
		// The "y" flag tells a server that offered -PLUS, if an attacker removed it from the
		// list, that the client could have bound the channel, so the server rejects the login.
		l.method = mechSCRAM
		l.scram = client.NewConversationAdvertisingChannelBinding()
	default:
		return fmt.Errorf("upstream offered SASL mechanisms %q, none of which the agent supports: %w",
			req.AuthMechanisms, handshake.ErrUpstreamProtocol)
	}

	first, err := l.scram.Step("")
	if err != nil {
		return fmt.Errorf("scram client-first-message: %w", err)
	}
	return l.send(&pgproto3.SASLInitialResponse{AuthMechanism: l.method, Data: []byte(first)})
}

// continueSCRAM responds to AuthenticationSASLContinue (server-first-message) with the
// client-final-message, which carries the proof.
func (l *upstreamLogin) continueSCRAM(body []byte) error {
	var req pgproto3.AuthenticationSASLContinue
	if err := req.Decode(body); err != nil {
		return upstreamProtocolError("decode AuthenticationSASLContinue: %v", err)
	}
	if l.scram == nil {
		return upstreamProtocolError("upstream sent AuthenticationSASLContinue without AuthenticationSASL")
	}
	if err := handshake.CheckSCRAMIterations(string(req.Data)); err != nil {
		return err
	}
	final, err := l.scram.Step(string(req.Data))
	if err != nil {
		return upstreamProtocolError("scram server-first-message: %v", err)
	}
	return l.send(&pgproto3.SASLResponse{Data: []byte(final)})
}

// finishSCRAM checks the server signature of AuthenticationSASLFinal.
func (l *upstreamLogin) finishSCRAM(body []byte) error {
	var req pgproto3.AuthenticationSASLFinal
	if err := req.Decode(body); err != nil {
		return upstreamProtocolError("decode AuthenticationSASLFinal: %v", err)
	}
	if l.scram == nil {
		return upstreamProtocolError("upstream sent AuthenticationSASLFinal without AuthenticationSASL")
	}
	if _, err := l.scram.Step(string(req.Data)); err != nil {
		return upstreamProtocolError("scram server-final-message: %v", err)
	}
	return nil
}

// md5Password computes the response to AuthenticationMD5Password:
// "md5" + hex(md5(hex(md5(password + user)) + salt)).
func md5Password(user, password string, salt [4]byte) string {
	inner := md5.Sum([]byte(password + user))
	innerHex := hex.EncodeToString(inner[:])
	outer := md5.Sum(append([]byte(innerHex), salt[:]...))
	return "md5" + hex.EncodeToString(outer[:])
}
