package credsource

import (
	"context"
	"fmt"
	"sync"
)

// Static is an in-memory Source, meant for tests and for programs that embed the proxy and
// already hold the credentials. The zero value is an empty source ready for use, and all
// methods are safe for concurrent use.
type Static struct {
	mu      sync.RWMutex
	secrets map[string]Credentials
}

var _ Source = (*Static)(nil)

// NewStatic returns a Static holding a copy of secrets, keyed by secret id.
func NewStatic(secrets map[string]Credentials) *Static {
	s := &Static{}
	for id, creds := range secrets {
		s.Set(id, creds)
	}
	return s
}

// Set stores creds under id, replacing any previous value. Tests use it to simulate a
// password rotation.
func (s *Static) Set(id string, creds Credentials) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.secrets == nil {
		s.secrets = make(map[string]Credentials)
	}
	s.secrets[id] = creds.clone()
}

// Delete removes the secret stored under id, if any.
func (s *Static) Delete(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.secrets, id)
}

// Fetch returns a copy of the credentials stored under id, or an error wrapping ErrNotFound.
func (s *Static) Fetch(ctx context.Context, id string) (Credentials, error) {
	if err := ctx.Err(); err != nil {
		return Credentials{}, err
	}
	s.mu.RLock()
	creds, ok := s.secrets[id]
	s.mu.RUnlock()
	if !ok {
		return Credentials{}, fmt.Errorf("static source: secret %q: %w", id, ErrNotFound)
	}
	return creds.clone(), nil
}

// clone copies the byte slices so that a caller cannot modify the stored values.
func (c Credentials) clone() Credentials {
	if c.Certificate != nil {
		c.Certificate = append([]byte(nil), c.Certificate...)
	}
	if c.PrivateKey != nil {
		c.PrivateKey = append([]byte(nil), c.PrivateKey...)
	}
	return c
}
