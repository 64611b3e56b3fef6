package credsource

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"
)

// Defaults for Cache.
const (
	// DefaultCacheTTL is how long Cache keeps fetched credentials when its TTL is zero.
	DefaultCacheTTL = 5 * time.Minute
	// DefaultFetchTimeout bounds one fetch from the wrapped Source when FetchTimeout is zero.
	DefaultFetchTimeout = 30 * time.Second
)

// Cache wraps a Source and keeps fetched credentials for a TTL.
//
// Concurrent Fetch calls for an id that is not cached share one fetch from the wrapped
// Source (single-flight), and all of them receive its result, error included. A failed fetch
// is not cached, so the next call tries again. The cache never makes a fetch for one id wait
// for a fetch of another id, though the wrapped Source may serialize its own fetches.
//
// The shared fetch runs with the values of the first caller's context but not its
// cancellation, bounded by FetchTimeout, so a caller that gives up does not fail the others.
// Each caller still returns as soon as its own context ends.
//
// Create a Cache with NewCache, or set Source on a zero Cache. Set the fields before the
// first Fetch and do not change them afterwards. Methods are safe for concurrent use.
type Cache struct {
	// Source is the wrapped source. It must not be nil.
	Source Source
	// TTL is how long fetched credentials are reused. Zero or negative means DefaultCacheTTL.
	TTL time.Duration
	// FetchTimeout bounds one fetch from Source. Zero or negative means DefaultFetchTimeout.
	FetchTimeout time.Duration
	// Now returns the current time. Nil means time.Now. Tests replace it to expire entries.
	Now func() time.Time

	group singleflight.Group

	mu      sync.Mutex
	entries map[string]cacheEntry
	// generations counts the invalidations of each id. A fetch stores its result only if
	// the id's generation did not change while it ran, so an invalidation is never undone
	// by a fetch that started before it.
	generations map[string]uint64

	hits, misses, fetches, fetchErrors atomic.Uint64
}

var _ Source = (*Cache)(nil)

type cacheEntry struct {
	creds   Credentials
	expires time.Time
}

// CacheStats are counters since the Cache was created.
type CacheStats struct {
	// Hits counts Fetch and Refresh calls served from the cache.
	Hits uint64
	// Misses counts Fetch calls that found no valid entry and waited for a fetch.
	Misses uint64
	// Fetches counts calls to the wrapped Source. With single-flight it can be far
	// lower than Misses.
	Fetches uint64
	// FetchErrors counts calls to the wrapped Source that returned an error.
	FetchErrors uint64
}

// NewCache returns a Cache over src that keeps credentials for ttl (zero means
// DefaultCacheTTL).
func NewCache(src Source, ttl time.Duration) *Cache {
	return &Cache{Source: src, TTL: ttl}
}

// Fetch returns the cached credentials for id, fetching them from the wrapped Source when
// they are missing or expired.
func (c *Cache) Fetch(ctx context.Context, id string) (Credentials, error) {
	if creds, ok := c.lookup(id); ok {
		c.hits.Add(1)
		return creds, nil
	}
	c.misses.Add(1)
	return c.fetchShared(ctx, id)
}

// Invalidate drops the cached credentials for id, so the next Fetch calls the wrapped Source.
// A fetch already running for id still returns its result to its waiters but does not store
// it.
func (c *Cache) Invalidate(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.invalidateLocked(id)
}

// Refresh fetches id again after the upstream rejected the credentials in rejected. If the
// cache still contains rejected, Refresh drops the entry and fetches. If another session has
// already refreshed the entry, Refresh returns the newer credentials without a fetch, so
// concurrent Refresh calls after one rotation share one fetch.
func (c *Cache) Refresh(ctx context.Context, id string, rejected Credentials) (Credentials, error) {
	c.mu.Lock()
	entry, ok := c.entries[id]
	if ok && !entry.creds.Equal(rejected) && c.now().Before(entry.expires) {
		c.mu.Unlock()
		c.hits.Add(1)
		return entry.creds.clone(), nil
	}
	if ok {
		c.invalidateLocked(id)
	}
	c.mu.Unlock()

	c.misses.Add(1)
	return c.fetchShared(ctx, id)
}

// Stats returns the cache's counters.
func (c *Cache) Stats() CacheStats {
	return CacheStats{
		Hits:        c.hits.Load(),
		Misses:      c.misses.Load(),
		Fetches:     c.fetches.Load(),
		FetchErrors: c.fetchErrors.Load(),
	}
}

func (c *Cache) lookup(id string) (Credentials, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	entry, ok := c.entries[id]
	if !ok || !c.now().Before(entry.expires) {
		return Credentials{}, false
	}
	return entry.creds.clone(), true
}

func (c *Cache) invalidateLocked(id string) {
	delete(c.entries, id)
	if c.generations == nil {
		c.generations = make(map[string]uint64)
	}
	c.generations[id]++
	// Make the next Fetch start a new flight instead of joining one that began before
	// the invalidation.
	c.group.Forget(id)
	// A source with a cache of its own (File's stat interval) drops it too, so the next
	// fetch sees a secret rotated a moment ago.
	if inv, ok := c.Source.(interface{ Invalidate(id string) }); ok {
		inv.Invalidate(id)
	}
}

// fetchShared joins or starts the single flight for id and waits for it or for ctx.
func (c *Cache) fetchShared(ctx context.Context, id string) (Credentials, error) {
	c.mu.Lock()
	generation := c.generations[id]
	c.mu.Unlock()

	fetchCtx := context.WithoutCancel(ctx)
	results := c.group.DoChan(id, func() (any, error) {
		// A flight that ended between this caller's lookup and DoChan may have stored
		// the entry already.
		if creds, ok := c.lookup(id); ok {
			return creds, nil
		}
		return c.fetchAndStore(fetchCtx, id, generation)
	})
	select {
	case res := <-results:
		if res.Err != nil {
			return Credentials{}, res.Err
		}
		// Every waiter gets its own copy of the byte slices.
		return res.Val.(Credentials).clone(), nil
	case <-ctx.Done():
		return Credentials{}, fmt.Errorf("credential cache: secret %q: %w", id, ctx.Err())
	}
}

func (c *Cache) fetchAndStore(ctx context.Context, id string, generation uint64) (Credentials, error) {
	timeout := c.FetchTimeout
	if timeout <= 0 {
		timeout = DefaultFetchTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	c.fetches.Add(1)
	creds, err := c.Source.Fetch(ctx, id)
	if err != nil {
		c.fetchErrors.Add(1)
		return Credentials{}, err
	}

	ttl := c.TTL
	if ttl <= 0 {
		ttl = DefaultCacheTTL
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.generations[id] == generation {
		if c.entries == nil {
			c.entries = make(map[string]cacheEntry)
		}
		c.entries[id] = cacheEntry{creds: creds.clone(), expires: c.now().Add(ttl)}
	}
	return creds, nil
}

func (c *Cache) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}
