package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/knoxcall/dbproxy/credsource"
)

// sourceNames lists the values of credentials.source for error messages.
const sourceNames = "file, env, exec or http"

// newSource builds the credential source of the credentials section. Paths in cc are
// already resolved. Warnings are problems that do not stop the agent.
func newSource(cc credentialsConfig) (credsource.Source, []string, error) {
	switch cc.Source {
	case "file":
		if cc.Path == "" {
			return nil, nil, errors.New("credentials.path: missing (the secrets file of source: file)")
		}
		f := credsource.NewFile(cc.Path)
		if err := f.Check(); errors.Is(err, credsource.ErrFileMode) {
			return f, []string{err.Error()}, nil
		} else if err != nil {
			return nil, nil, fmt.Errorf("credentials.path: %w", err)
		}
		return f, nil, nil
	case "env":
		return credsource.Env{Prefix: cc.EnvPrefix}, nil, nil
	case "exec":
		if len(cc.Command) == 0 || cc.Command[0] == "" {
			return nil, nil, errors.New("credentials.command: missing (the helper of source: exec, as a list: [/path/helper, arg...])")
		}
		return &credsource.Exec{Command: cc.Command, Timeout: time.Duration(cc.Timeout)}, nil, nil
	case "http":
		if cc.BaseURL == "" {
			return nil, nil, errors.New("credentials.base_url: missing (the https URL of source: http)")
		}
		h := &credsource.HTTP{BaseURL: cc.BaseURL, TokenFile: cc.TokenFile, TokenEnv: cc.TokenEnv,
			CAFile: cc.CAFile, Timeout: time.Duration(cc.Timeout)}
		if err := h.Check(); err != nil {
			return nil, nil, fmt.Errorf("credentials: %w", err)
		}
		return h, nil, nil
	case "":
		return nil, nil, fmt.Errorf("credentials.source: missing (want %s)", sourceNames)
	}
	return nil, nil, fmt.Errorf("credentials.source: unknown source %q (want %s)", cc.Source, sourceNames)
}

// secretPair is a route's secret and the secret of the client certificate it presents.
type secretPair struct {
	credentials, clientCert string
}

// combinedSecretID is the secret id that the agent gives knoxproxy for a route with
// client_cert_secret_id. It shows both ids in the session log.
func combinedSecretID(credentials, clientCert string) string {
	return credentials + "+client_cert:" + clientCert
}

// clientCertSource fetches the combined ids of routes with client_cert_secret_id: the
// route's credentials with the certificate and key of the second secret. Other ids pass
// through. Pairs are only ever added, so that routes still running after a reload that
// dropped them keep working.
type clientCertSource struct {
	inner credsource.Source

	mu    sync.Mutex
	pairs map[string]secretPair
}

func newClientCertSource(inner credsource.Source, pairs map[string]secretPair) *clientCertSource {
	s := &clientCertSource{inner: inner, pairs: make(map[string]secretPair)}
	maps.Copy(s.pairs, pairs)
	return s
}

func (s *clientCertSource) add(pairs map[string]secretPair) {
	s.mu.Lock()
	defer s.mu.Unlock()
	maps.Copy(s.pairs, pairs)
}

func (s *clientCertSource) snapshot() map[string]secretPair {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.pairs)
}

func (s *clientCertSource) lookup(id string) (secretPair, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	pair, ok := s.pairs[id]
	return pair, ok
}

func (s *clientCertSource) Fetch(ctx context.Context, id string) (credsource.Credentials, error) {
	pair, ok := s.lookup(id)
	if !ok {
		return s.inner.Fetch(ctx, id)
	}
	creds, err := s.inner.Fetch(ctx, pair.credentials)
	if err != nil {
		return credsource.Credentials{}, err
	}
	cert, err := s.inner.Fetch(ctx, pair.clientCert)
	if err != nil {
		return credsource.Credentials{}, fmt.Errorf("client_cert_secret_id %q: %w", pair.clientCert, err)
	}
	if len(cert.Certificate) == 0 || len(cert.PrivateKey) == 0 {
		return credsource.Credentials{}, fmt.Errorf("client_cert_secret_id %q: the secret has no certificate and private_key", pair.clientCert)
	}
	creds.Certificate, creds.PrivateKey = cert.Certificate, cert.PrivateKey
	return creds, nil
}

// Invalidate passes an invalidation on to the inner source, for both secrets of a pair.
func (s *clientCertSource) Invalidate(id string) {
	inv, ok := s.inner.(interface{ Invalidate(string) })
	if !ok {
		return
	}
	if pair, ok := s.lookup(id); ok {
		inv.Invalidate(pair.credentials)
		inv.Invalidate(pair.clientCert)
		return
	}
	inv.Invalidate(id)
}

// switchableSource is the source the server holds for its whole life. A reload that
// changes the credentials section swaps the cache behind it: sessions that start later
// use the new source, and sessions already running are not affected.
type switchableSource struct {
	mu    sync.Mutex
	cache *credsource.Cache
	certs *clientCertSource
	// retired sums the counters of caches swapped out, so that the cache metrics never
	// go backwards.
	retired credsource.CacheStats
}

func newSwitchableSource(cfg *agentConfig) *switchableSource {
	s := &switchableSource{}
	s.swap(cfg.source, cfg.cacheTTL, cfg.clientCerts)
	return s
}

// swap installs a new cache over src and returns a function that restores the previous
// one. The pairs of the old source are kept in the new one.
func (s *switchableSource) swap(src credsource.Source, ttl time.Duration, pairs map[string]secretPair) (undo func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	oldCache, oldCerts, oldRetired := s.cache, s.certs, s.retired
	certs := newClientCertSource(src, nil)
	if oldCerts != nil {
		certs.add(oldCerts.snapshot())
	}
	certs.add(pairs)
	if oldCache != nil {
		s.retired = addStats(s.retired, oldCache.Stats())
	}
	s.cache, s.certs = credsource.NewCache(certs, ttl), certs
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.cache, s.certs, s.retired = oldCache, oldCerts, oldRetired
	}
}

// addPairs registers the combined ids of a reloaded configuration whose credentials
// section did not change.
func (s *switchableSource) addPairs(pairs map[string]secretPair) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.certs.add(pairs)
}

func (s *switchableSource) current() *credsource.Cache {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cache
}

func (s *switchableSource) Fetch(ctx context.Context, id string) (credsource.Credentials, error) {
	return s.current().Fetch(ctx, id)
}

// Refresh and Invalidate let knoxproxy bypass the cache after an upstream rejected the
// credentials, as it does with a bare credsource.Cache.
func (s *switchableSource) Refresh(ctx context.Context, id string, rejected credsource.Credentials) (credsource.Credentials, error) {
	return s.current().Refresh(ctx, id, rejected)
}

func (s *switchableSource) Invalidate(id string) { s.current().Invalidate(id) }

// Stats returns the counters of every cache since the agent started.
func (s *switchableSource) Stats() credsource.CacheStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return addStats(s.retired, s.cache.Stats())
}

func addStats(a, b credsource.CacheStats) credsource.CacheStats {
	return credsource.CacheStats{
		Hits:        a.Hits + b.Hits,
		Misses:      a.Misses + b.Misses,
		Fetches:     a.Fetches + b.Fetches,
		FetchErrors: a.FetchErrors + b.FetchErrors,
	}
}
