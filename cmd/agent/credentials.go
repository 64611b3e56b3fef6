package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/knoxcall/dbproxy/credsource"
)

// sourceNames lists the values of credentials.source for error messages.
const sourceNames = "file, env, exec or http"

// newSource builds the credential source of the credentials section. Paths in cc are
// already resolved. Warnings are problems that do not stop the agent.
func newSource(cc credentialsConfig) (credsource.Source, []string, error) {
	src, warnings, err := newSourceOf(cc)
	if err != nil {
		return nil, nil, err
	}
	return src, append(warnings, ignoredKeys(cc)...), nil
}

// ignoredKeys warns about keys of the credentials section that the chosen source does not
// read, such as a command left behind after switching from source: exec to file.
func ignoredKeys(cc credentialsConfig) []string {
	keys := []struct {
		name    string
		set     bool
		sources string
	}{
		{"path", cc.Path != "", "file"},
		{"env_prefix", cc.EnvPrefix != "", "env"},
		{"command", len(cc.Command) > 0, "exec"},
		{"timeout", cc.Timeout != 0, "exec http"},
		{"base_url", cc.BaseURL != "", "http"},
		{"token_file", cc.TokenFile != "", "http"},
		{"token_env", cc.TokenEnv != "", "http"},
		{"ca_file", cc.CAFile != "", "http"},
	}
	var warnings []string
	for _, k := range keys {
		if k.set && !slices.Contains(strings.Fields(k.sources), cc.Source) {
			warnings = append(warnings, fmt.Sprintf("credentials.%s is ignored with source: %s", k.name, cc.Source))
		}
	}
	return warnings
}

func newSourceOf(cc credentialsConfig) (credsource.Source, []string, error) {
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

// switchableSource is the source the server holds for its whole life. A reload that
// changes the credentials section swaps the cache behind it: sessions that start later
// use the new source, and sessions already running are not affected.
type switchableSource struct {
	// log receives the lines of sources that log, such as a secrets file that turned
	// invalid.
	log *slog.Logger

	mu    sync.Mutex
	cache *credsource.Cache
	// file is the source behind cache when it is a secrets file, else nil.
	file *credsource.File
	// retired sums the counters of caches swapped out, so that the cache metrics never
	// go backwards.
	retired credsource.CacheStats
}

func newSwitchableSource(cfg *agentConfig, log *slog.Logger) *switchableSource {
	s := &switchableSource{log: log}
	s.swap(cfg.source, cfg.cacheTTL)
	return s
}

// swap installs a new cache over src and returns a function that restores the previous
// one.
func (s *switchableSource) swap(src credsource.Source, ttl time.Duration) (undo func()) {
	file, _ := src.(*credsource.File)
	if file != nil && file.Logger == nil {
		file.Logger = s.log
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	oldCache, oldRetired, oldFile := s.cache, s.retired, s.file
	if oldCache != nil {
		s.retired = addStats(s.retired, oldCache.Stats())
	}
	s.cache, s.file = credsource.NewCache(src, ttl), file
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.cache, s.retired, s.file = oldCache, oldRetired, oldFile
	}
}

// pollFile lets a secrets file behind the cache report an edit that made it invalid, or
// valid again, while the cache still serves every fetch.
func (s *switchableSource) pollFile() {
	s.mu.Lock()
	file := s.file
	s.mu.Unlock()
	if file != nil {
		file.Poll()
	}
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
