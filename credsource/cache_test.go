package credsource

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countingSource counts fetches per id. A fetch waits on gate, when set, so that tests can
// hold it in flight, and fails with err, when set.
type countingSource struct {
	inner Source
	gate  chan struct{}
	err   atomic.Pointer[error]

	mu     sync.Mutex
	counts map[string]int
	// started receives the id of each fetch as it starts, when not nil.
	started chan string
}

func (s *countingSource) Fetch(ctx context.Context, id string) (Credentials, error) {
	s.mu.Lock()
	if s.counts == nil {
		s.counts = make(map[string]int)
	}
	s.counts[id]++
	s.mu.Unlock()
	if s.started != nil {
		s.started <- id
	}
	if s.gate != nil {
		select {
		case <-s.gate:
		case <-ctx.Done():
			return Credentials{}, ctx.Err()
		}
	}
	if errp := s.err.Load(); errp != nil {
		return Credentials{}, *errp
	}
	return s.inner.Fetch(ctx, id)
}

func (s *countingSource) count(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts[id]
}

func TestCacheSingleFlight(t *testing.T) {
	const sessions = 100
	src := &countingSource{
		inner: NewStatic(map[string]Credentials{"a": {Username: "app", Password: canary}}),
		gate:  make(chan struct{}),
	}
	cache := NewCache(src, time.Minute)

	var wg sync.WaitGroup
	errs := make(chan error, sessions)
	for range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			creds, err := cache.Fetch(t.Context(), "a")
			if err == nil && creds.Password != canary {
				err = errors.New("wrong password")
			}
			errs <- err
		}()
	}
	// Let the callers pile up behind the one fetch before it completes.
	waitFor(t, func() bool { return cache.Stats().Misses == sessions })
	close(src.gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("Fetch: %v", err)
		}
	}
	if got := src.count("a"); got != 1 {
		t.Errorf("%d concurrent sessions made %d fetches, want 1", sessions, got)
	}
	if _, err := cache.Fetch(t.Context(), "a"); err != nil {
		t.Fatal(err)
	}
	stats := cache.Stats()
	if stats.Fetches != 1 || stats.Hits != 1 || stats.Misses != sessions {
		t.Errorf("Stats() = %+v, want 1 fetch, 1 hit, %d misses", stats, sessions)
	}
}

func TestCacheTTL(t *testing.T) {
	tests := []struct {
		name    string
		ttl     time.Duration
		wantTTL time.Duration
	}{
		{name: "explicit", ttl: 10 * time.Second, wantTTL: 10 * time.Second},
		{name: "zero means default", ttl: 0, wantTTL: DefaultCacheTTL},
		{name: "negative means default", ttl: -time.Second, wantTTL: DefaultCacheTTL},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			static := NewStatic(map[string]Credentials{"a": {Username: "app", Password: "old"}})
			src := &countingSource{inner: static}
			clock := newFakeClock()
			cache := &Cache{Source: src, TTL: tt.ttl, Now: clock.Now}
			ctx := t.Context()

			if _, err := cache.Fetch(ctx, "a"); err != nil {
				t.Fatal(err)
			}
			static.Set("a", Credentials{Username: "app", Password: "new"})

			clock.Advance(tt.wantTTL - time.Nanosecond)
			creds, err := cache.Fetch(ctx, "a")
			if err != nil {
				t.Fatal(err)
			}
			if creds.Password != "old" || src.count("a") != 1 {
				t.Errorf("just before the TTL: fetches = %d, want the cached entry", src.count("a"))
			}

			clock.Advance(time.Nanosecond)
			creds, err = cache.Fetch(ctx, "a")
			if err != nil {
				t.Fatal(err)
			}
			if creds.Password != "new" || src.count("a") != 2 {
				t.Errorf("at the TTL: fetches = %d, want a second fetch with the new password", src.count("a"))
			}
		})
	}
}

func TestCacheErrorNotCached(t *testing.T) {
	src := &countingSource{inner: NewStatic(map[string]Credentials{"a": {Username: "app"}})}
	cache := NewCache(src, time.Minute)
	ctx := t.Context()

	errDown := errors.New("vault unreachable")
	src.err.Store(&errDown)
	if _, err := cache.Fetch(ctx, "a"); !errors.Is(err, errDown) {
		t.Fatalf("error = %v, want %v", err, errDown)
	}
	src.err.Store(nil)
	if _, err := cache.Fetch(ctx, "a"); err != nil {
		t.Fatalf("after recovery: %v", err)
	}
	if got := src.count("a"); got != 2 {
		t.Errorf("fetches = %d, want 2 (the failure must not be cached)", got)
	}
	if got := cache.Stats().FetchErrors; got != 1 {
		t.Errorf("FetchErrors = %d, want 1", got)
	}
	if _, err := cache.Fetch(ctx, "missing"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown id: error = %v, want ErrNotFound", err)
	}
}

func TestCacheErrorSharedByWaiters(t *testing.T) {
	const callers = 10
	src := &countingSource{inner: NewStatic(nil), gate: make(chan struct{})}
	errDown := errors.New("vault unreachable")
	src.err.Store(&errDown)
	cache := NewCache(src, time.Minute)

	var wg sync.WaitGroup
	var failures atomic.Int32
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := cache.Fetch(t.Context(), "a"); errors.Is(err, errDown) {
				failures.Add(1)
			}
		}()
	}
	waitFor(t, func() bool { return cache.Stats().Misses == callers })
	close(src.gate)
	wg.Wait()
	if got := failures.Load(); got != callers {
		t.Errorf("%d of %d callers got the fetch error", got, callers)
	}
	if got := src.count("a"); got != 1 {
		t.Errorf("fetches = %d, want 1", got)
	}
}

func TestCacheInvalidate(t *testing.T) {
	static := NewStatic(map[string]Credentials{"a": {Username: "app", Password: "old"}})
	src := &countingSource{inner: static}
	cache := NewCache(src, time.Hour)
	ctx := t.Context()

	if _, err := cache.Fetch(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	static.Set("a", Credentials{Username: "app", Password: "new"})
	cache.Invalidate("a")
	creds, err := cache.Fetch(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if creds.Password != "new" {
		t.Errorf("after Invalidate: got the old password")
	}
	if got := src.count("a"); got != 2 {
		t.Errorf("fetches = %d, want 2", got)
	}
}

func TestCacheInvalidateDuringFetch(t *testing.T) {
	static := NewStatic(map[string]Credentials{"a": {Username: "app", Password: "old"}})
	src := &countingSource{inner: static, gate: make(chan struct{}), started: make(chan string, 4)}
	cache := NewCache(src, time.Hour)

	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = cache.Fetch(t.Context(), "a")
	}()
	<-src.started
	// The fetch in flight may return the old value. After Invalidate it must not be stored.
	cache.Invalidate("a")
	close(src.gate)
	<-done

	static.Set("a", Credentials{Username: "app", Password: "new"})
	creds, err := cache.Fetch(t.Context(), "a")
	if err != nil {
		t.Fatal(err)
	}
	if creds.Password != "new" {
		t.Errorf("a fetch that started before Invalidate was stored")
	}
}

func TestCacheRefresh(t *testing.T) {
	static := NewStatic(map[string]Credentials{"a": {Username: "app", Password: "old"}})
	src := &countingSource{inner: static}
	cache := NewCache(src, time.Hour)
	ctx := t.Context()

	rejected, err := cache.Fetch(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	static.Set("a", Credentials{Username: "app", Password: "new"})

	// Many sessions see the same rejection. The first refresh fetches and the others
	// find the new entry.
	for i := range 5 {
		creds, err := cache.Refresh(ctx, "a", rejected)
		if err != nil {
			t.Fatal(err)
		}
		if creds.Password != "new" {
			t.Errorf("refresh %d: got the rejected password", i)
		}
	}
	if got := src.count("a"); got != 2 {
		t.Errorf("fetches = %d, want 2", got)
	}

	// A refresh with an id that was never cached fetches it.
	if _, err := cache.Refresh(ctx, "b", Credentials{}); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown id: error = %v, want ErrNotFound", err)
	}
}

func TestCacheOtherIDsNotBlocked(t *testing.T) {
	static := NewStatic(map[string]Credentials{"slow": {Username: "s"}, "fast": {Username: "f"}})
	gated := &countingSource{inner: static, gate: make(chan struct{}), started: make(chan string, 1)}
	src := sourceFunc(func(ctx context.Context, id string) (Credentials, error) {
		if id == "slow" {
			return gated.Fetch(ctx, id)
		}
		return static.Fetch(ctx, id)
	})
	cache := NewCache(src, time.Minute)
	defer close(gated.gate)

	go func() { _, _ = cache.Fetch(context.Background(), "slow") }()
	<-gated.started

	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if _, err := cache.Fetch(ctx, "fast"); err != nil {
		t.Fatalf("fetch of another id while one is in flight: %v", err)
	}
}

func TestCacheCallerContext(t *testing.T) {
	static := NewStatic(map[string]Credentials{"a": {Username: "app"}})
	src := &countingSource{inner: static, gate: make(chan struct{}), started: make(chan string, 1)}
	cache := NewCache(src, time.Minute)

	// The first caller gives up; the shared fetch goes on and a later caller gets its result.
	ctx, cancel := context.WithCancel(t.Context())
	errs := make(chan error, 1)
	go func() {
		_, err := cache.Fetch(ctx, "a")
		errs <- err
	}()
	<-src.started
	cancel()
	if err := <-errs; !errors.Is(err, context.Canceled) {
		t.Errorf("canceled caller: error = %v, want context.Canceled", err)
	}

	second := make(chan error, 1)
	go func() {
		_, err := cache.Fetch(t.Context(), "a")
		second <- err
	}()
	close(src.gate)
	if err := <-second; err != nil {
		t.Errorf("second caller: %v", err)
	}
	if got := src.count("a"); got != 1 {
		t.Errorf("fetches = %d, want 1", got)
	}
}

func TestCacheFetchTimeout(t *testing.T) {
	src := &countingSource{inner: NewStatic(nil), gate: make(chan struct{})}
	defer close(src.gate)
	cache := &Cache{Source: src, FetchTimeout: 20 * time.Millisecond}
	if _, err := cache.Fetch(t.Context(), "a"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error = %v, want context.DeadlineExceeded", err)
	}
}

type sourceFunc func(ctx context.Context, id string) (Credentials, error)

func (f sourceFunc) Fetch(ctx context.Context, id string) (Credentials, error) { return f(ctx, id) }

// waitFor polls cond for up to five seconds.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(time.Millisecond)
	}
}
