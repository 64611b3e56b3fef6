package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/knoxcall/dbproxy/credsource"
	"github.com/knoxcall/dbproxy/knoxproxy"
)

// credentialRetryInterval is how often the agent fetches again the secrets of routes whose
// last fetch failed, so that /readyz turns 200 once the secret can be fetched, without
// waiting for a client to connect.
const credentialRetryInterval = 5 * time.Second

// fetchTimeout bounds one round of fetches: all routes' secrets at start, or the retries
// of one interval. The source's own timeout (credentials.timeout) applies within it.
const fetchTimeout = 10 * time.Second

// credentialWatcher records the result of the agent's own fetches of each route's secrets
// and retries failed ones in the background. Sessions fetch through the same cache, and
// knoxproxy records their results in RouteStats; readiness combines both.
type credentialWatcher struct {
	log   *slog.Logger
	fetch func(ctx context.Context, id string) error
	stats func() []knoxproxy.RouteStats

	mu     sync.Mutex
	routes map[string]*routeCredentials
	// stopLoop stops the running retry loop and waits for it; nil when none runs.
	stopLoop func()
}

// routeCredentials is the agent's view of one route's secrets.
type routeCredentials struct {
	route knoxproxy.Route
	// err is the error of the agent's last fetch, or nil after a successful one or
	// before the first.
	err error
	// overridesSession is set when the agent's fetch succeeded while RouteStats still
	// showed a failed session fetch, which stays there until the next session fetches.
	overridesSession bool
}

// problem returns why route name's credentials make it not ready, or "" when they do not.
// st is the route's RouteStats.
func (w *credentialWatcher) problem(name string, st knoxproxy.RouteStats) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	rc := w.routes[name]
	switch {
	case rc != nil && rc.err != nil:
		return "credentials unavailable: " + publicFetchError(rc.err)
	case st.CredentialsFetched && !st.CredentialsOK && (rc == nil || !rc.overridesSession):
		return "last credential fetch failed"
	}
	return ""
}

// start fetches the secrets of routes once, logging each failure, and then retries every
// credentialRetryInterval in the background until ctx ends or stop is called. A reload
// calls stop and start again with the new routes. With wait set, start returns after the
// first round of fetches; otherwise that round runs in the background too.
func (w *credentialWatcher) start(ctx context.Context, routes []knoxproxy.Route, wait bool) {
	w.mu.Lock()
	w.routes = make(map[string]*routeCredentials, len(routes))
	for _, r := range routes {
		w.routes[r.Name] = &routeCredentials{route: r}
	}
	w.mu.Unlock()

	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	first := make(chan struct{})
	go func() {
		defer close(done)
		w.fetchRound(ctx, true)
		close(first)
		ticker := time.NewTicker(credentialRetryInterval)
		defer ticker.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-ticker.C:
				w.fetchRound(ctx, false)
			}
		}
	}()
	w.mu.Lock()
	w.stopLoop = func() {
		cancel()
		<-done
	}
	w.mu.Unlock()
	if wait {
		select {
		case <-first:
		case <-done:
		}
	}
}

// stop stops the retry loop and waits for it to return.
func (w *credentialWatcher) stop() {
	w.mu.Lock()
	stop := w.stopLoop
	w.stopLoop = nil
	w.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// fetchRound fetches, in parallel, the secrets of every route (all set) or of the routes
// whose last fetch failed, by the agent or by a session, and records the results.
func (w *credentialWatcher) fetchRound(ctx context.Context, all bool) {
	sessionFailed := make(map[string]bool)
	for _, st := range w.stats() {
		sessionFailed[st.Name] = st.CredentialsFetched && !st.CredentialsOK
	}
	w.mu.Lock()
	var due []*routeCredentials
	for name, rc := range w.routes {
		if !sessionFailed[name] {
			rc.overridesSession = false
		}
		if all || rc.err != nil || sessionFailed[name] {
			due = append(due, rc)
		}
	}
	w.mu.Unlock()

	ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for _, rc := range due {
		wg.Go(func() {
			err := w.fetchRoute(ctx, rc.route)
			if ctx.Err() != nil && err != nil && !all {
				// A reload or shutdown cancelled the fetch, so its error reflects the cancellation
				// and not the secret.
				return
			}
			w.record(rc, err, all, sessionFailed[rc.route.Name])
		})
	}
	wg.Wait()
}

// fetchRoute fetches the route's secret and its client certificate secret, if any.
func (w *credentialWatcher) fetchRoute(ctx context.Context, r knoxproxy.Route) error {
	for _, id := range []string{r.SecretID, r.TLS.ClientCertSecretID} {
		if id == "" {
			continue
		}
		if err := w.fetch(ctx, id); err != nil {
			key := "committed_secret_id"
			if id != r.SecretID {
				key = "tls.client_cert_secret_id"
			}
			return &routeFetchError{id: id, key: key, err: err}
		}
	}
	return nil
}

// routeFetchError is a failed fetch of one of a route's secrets.
type routeFetchError struct {
	id  string // the secret id
	key string // the route field that names it
	err error
}

func (e *routeFetchError) Error() string {
	if errors.Is(e.err, credsource.ErrNotFound) {
		return fmt.Sprintf("%v (add secret %q to the credential source, or fix the route's %s)", e.err, e.id, e.key)
	}
	return e.err.Error()
}

func (e *routeFetchError) Unwrap() error { return e.err }

// publicFetchError describes err without the source's own message. Any local user can read
// /readyz, and that message (an exec helper's stderr, an HTTP error body) can contain
// anything, a token included, so only the log has it.
func publicFetchError(err error) string {
	var fe *routeFetchError
	if !errors.As(err, &fe) {
		return "the credential source failed; the agent's log has the cause"
	}
	if errors.Is(fe.err, credsource.ErrNotFound) {
		return fmt.Sprintf("secret %q not found (add it to the credential source, or fix the route's %s)", fe.id, fe.key)
	}
	return fmt.Sprintf("the credential source failed for secret %q; the agent's log has the cause", fe.id)
}

// record stores the result of a fetch and logs when the route's state changes.
func (w *credentialWatcher) record(rc *routeCredentials, err error, first, sessionFailed bool) {
	w.mu.Lock()
	prev := rc.err
	rc.err = err
	rc.overridesSession = err == nil && sessionFailed
	w.mu.Unlock()

	name := rc.route.Name
	switch {
	case err != nil && first:
		w.log.Warn("secret not available at start; sessions of this route fail until it is",
			"route", name, "err", err, "retry_interval", credentialRetryInterval)
	case err != nil && (prev == nil || prev.Error() != err.Error()):
		w.log.Warn("secret not available; retrying", "route", name, "err", err,
			"retry_interval", credentialRetryInterval)
	case err == nil && (prev != nil || sessionFailed):
		w.log.Info("secret available again", "route", name)
	}
}
