package mongoauth

import (
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"

	"github.com/xdg-go/scram"
	"github.com/xdg-go/stringprep"
)

// SCRAM mechanism names as MongoDB spells them in saslStart and saslSupportedMechs.
const (
	mechanismSHA256 = "SCRAM-SHA-256"
	mechanismSHA1   = "SCRAM-SHA-1"
)

const (
	// minSCRAMIterations rejects a server-first message with a lower iteration count, which
	// would make the salted password cheap to brute-force. 4096 is the minimum that the
	// MongoDB authentication specification sets for both SCRAM mechanisms.
	minSCRAMIterations = 4096
	// maxCachedSCRAMClients bounds scramClients. Each entry holds one credential and its
	// derived keys; a full cache is emptied and refilled, which costs one key derivation
	// per credential.
	maxCachedSCRAMClients = 1024
)

// scramClients keeps one scram.Client per mechanism and credential, because a Client caches
// the salted password for the salt and iteration count the server sent. Without it every
// session would run PBKDF2 (15000 iterations of SHA-256 by default on MongoDB) again.
var scramClients = scramClientCache{clients: make(map[[sha256.Size]byte]*scram.Client)}

type scramClientCache struct {
	mu      sync.Mutex
	clients map[[sha256.Size]byte]*scram.Client
}

// get returns the cached client for mechanism, user and password, creating it when missing.
// The map key is a SHA-256 digest, so the cache keys contain no password.
func (c *scramClientCache) get(mechanism, user, password string) (*scram.Client, error) {
	key := sha256.Sum256([]byte(fmt.Sprintf("%d:%s\x00%d:%s\x00%s", len(mechanism), mechanism, len(user), user, password)))
	c.mu.Lock()
	defer c.mu.Unlock()
	if client, ok := c.clients[key]; ok {
		return client, nil
	}
	client, err := newSCRAMClient(mechanism, user, password)
	if err != nil {
		return nil, err
	}
	if len(c.clients) >= maxCachedSCRAMClients {
		clear(c.clients)
	}
	c.clients[key] = client
	return client, nil
}

// newSCRAMClient builds a client the way MongoDB expects for each mechanism: SCRAM-SHA-256
// takes the SASLprep-ed password, and SCRAM-SHA-1 takes the hex MD5 digest of
// "<user>:mongo:<password>" in place of the password. The user name is not SASLprep-ed.
func newSCRAMClient(mechanism, user, password string) (*scram.Client, error) {
	var client *scram.Client
	var err error
	switch mechanism {
	case mechanismSHA256:
		prepared, prepErr := stringprep.SASLprep.Prepare(password)
		if prepErr != nil {
			// The error from SASLprep names the offending rune, never the password.
			return nil, fmt.Errorf("SASLprep of the stored password: %w", prepErr)
		}
		client, err = scram.SHA256.NewClientUnprepped(user, prepared, "")
	case mechanismSHA1:
		client, err = scram.SHA1.NewClientUnprepped(user, mongoPasswordDigest(user, password), "")
	default:
		return nil, fmt.Errorf("unsupported mechanism %q", mechanism)
	}
	if err != nil {
		return nil, fmt.Errorf("%s client: %w", mechanism, err)
	}
	return client.WithMinIterations(minSCRAMIterations), nil
}

// mongoPasswordDigest returns the password that SCRAM-SHA-1 uses on MongoDB.
func mongoPasswordDigest(user, password string) string {
	sum := md5.Sum([]byte(user + ":mongo:" + password))
	return hex.EncodeToString(sum[:])
}
