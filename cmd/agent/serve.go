package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"reflect"
	"syscall"
	"time"

	"github.com/knoxcall/dbproxy/internal/metrics"
	"github.com/knoxcall/dbproxy/knoxproxy"
	"github.com/knoxcall/dbproxy/peercred"
)

// defaultConfigCheckInterval is how often the agent looks at the configuration file's
// modification time, size and inode when config_check_interval is not set.
const defaultConfigCheckInterval = 5 * time.Second

// daemon is a running agent: the server, its credential source and its configuration.
type daemon struct {
	path  string
	log   *slog.Logger
	srv   *knoxproxy.Server
	creds *switchableSource
	ready *readiness
	// secrets fetches the routes' secrets at start and after a reload, and retries failed
	// fetches in the background.
	secrets *credentialWatcher

	// cfg is the running configuration; only the reload goroutine changes it after start.
	cfg *agentConfig
}

// serve runs the agent until ctx ends, then shuts it down: /readyz turns 503, the
// listeners stay open for shutdown_delay, then close, and open sessions get up to
// shutdown_timeout to finish. It returns an error wrapping knoxproxy.ErrShutdownTimeout
// when sessions had to be closed.
func serve(ctx context.Context, path string, cfg *agentConfig, log *slog.Logger) error {
	d := &daemon{path: path, log: log, cfg: cfg, creds: newSwitchableSource(cfg, log)}
	obs := metrics.NewObserver()
	srv, err := knoxproxy.New(knoxproxy.Config{
		Routes:          cfg.routes,
		Credentials:     d.creds,
		PeerChecker:     &peercred.Kernel{ResolvePID: cfg.resolvePeerPID},
		Logger:          log,
		Observer:        obs,
		ShutdownTimeout: cfg.shutdownTimeout,
		MaxLogins:       cfg.maxLogins,
	})
	if err != nil {
		return usagef("config: %v", err)
	}
	d.srv = srv
	d.secrets = &credentialWatcher{
		log: log,
		fetch: func(ctx context.Context, id string) error {
			_, err := d.creds.Fetch(ctx, id)
			return err
		},
		stats: srv.Stats,
	}
	d.ready = &readiness{srv: srv, creds: d.secrets}
	d.ready.setRoutes(cfg.routes)
	for _, w := range cfg.warnings {
		log.Warn(w)
	}

	// Bind the admin listener before the routes, so that a taken port stops the agent
	// before it accepts any client.
	stopAdmin := func() {}
	if cfg.adminAddress != "" {
		ln, err := listenAdmin(ctx, cfg.adminAddress)
		if err != nil {
			return fmt.Errorf("admin_address: %w", err)
		}
		reg, err := metrics.New(obs, metrics.Sources{Routes: srv.Stats, Cache: d.creds.Stats})
		if err != nil {
			ln.Close()
			return fmt.Errorf("metrics: %w", err)
		}
		stopAdmin = startAdmin(ln, newAdminHandler(d.ready, reg), log)
	}
	defer stopAdmin()

	log.Info("agent starting", "version", version(), "config", path, "routes", len(cfg.routes))
	// The first fetch of every route's secrets fills the cache before the listeners open
	// and turns a missing secret into a warning at start.
	d.secrets.start(ctx, cfg.routes, true)
	defer d.secrets.stop()
	// The server's context outlives ctx by shutdown_delay.
	serveCtx, stopServing := context.WithCancel(context.WithoutCancel(ctx))
	defer stopServing()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(serveCtx) }()

	select {
	case err := <-served:
		return err
	case <-srv.Ready():
	}
	watchCtx, stopWatching := context.WithCancel(ctx)
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		d.watch(watchCtx)
	}()
	waitWatch := func() {
		stopWatching()
		<-watched
	}

	select {
	case err := <-served:
		waitWatch()
		return err
	case <-ctx.Done():
	}
	d.ready.stopping.Store(true)
	// After the watcher has returned, d.cfg no longer changes.
	waitWatch()
	if delay := d.cfg.shutdownDelay; delay > 0 {
		log.Info("shutdown requested: readyz returns 503; still accepting until the shutdown delay ends",
			"shutdown_delay", delay)
		select {
		case <-time.After(delay):
		case err := <-served:
			return err
		}
	}
	stopServing()
	if err := <-served; err != nil {
		return err
	}
	log.Info("agent stopped")
	return nil
}

// watch reloads the configuration on SIGHUP and when the file changes, until ctx ends.
func (d *daemon) watch(ctx context.Context) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	ticker := time.NewTicker(d.cfg.checkInterval)
	defer ticker.Stop()
	last := statConfig(d.path)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			last = statConfig(d.path)
			d.reload(ctx, "SIGHUP")
		case <-ticker.C:
			if cur := statConfig(d.path); cur != last {
				last = cur
				d.reload(ctx, "config file changed")
			}
			d.creds.pollFile()
		}
	}
}

// configStat is the file state that watch compares to detect a changed configuration file.
// An in-place write changes the time or size, and an atomic rename changes the inode.
type configStat struct {
	modTime time.Time
	size    int64
	inode   uint64
	err     string
}

func statConfig(path string) configStat {
	info, err := os.Stat(path)
	if err != nil {
		return configStat{err: err.Error()}
	}
	st := configStat{modTime: info.ModTime(), size: info.Size()}
	if sys, ok := info.Sys().(*syscall.Stat_t); ok {
		st.inode = uint64(sys.Ino)
	}
	return st
}

// reload loads the configuration file again and applies it. An invalid file, or routes
// the server cannot start, leave the running configuration in place.
func (d *daemon) reload(ctx context.Context, trigger string) {
	log := d.log.With("trigger", trigger, "config", d.path)
	cfg, err := loadConfig(d.path)
	if err != nil {
		log.Error("reload failed: keeping the running configuration", "err", err)
		return
	}
	old := d.cfg
	for _, w := range cfg.warnings {
		log.Warn(w)
	}

	// A changed credentials section gets a new source and an empty cache before the routes
	// change, so that new routes never fetch through the old source.
	undo := func() {}
	sourceChanged := !reflect.DeepEqual(cfg.credentials, old.credentials)
	if sourceChanged {
		undo = d.creds.swap(cfg.source, cfg.cacheTTL)
	}
	if err := d.srv.Update(cfg.routes); err != nil {
		undo()
		log.Error("reload failed: keeping the running configuration", "err", err)
		return
	}

	// These settings belong to listeners and timers that exist once per process.
	for _, s := range []struct {
		name     string
		changed  bool
		old, new any
	}{
		{"admin_address", cfg.adminAddress != old.adminAddress, old.adminAddress, cfg.adminAddress},
		{"shutdown_timeout", cfg.shutdownTimeout != old.shutdownTimeout, old.shutdownTimeout, cfg.shutdownTimeout},
		{"config_check_interval", cfg.checkInterval != old.checkInterval, old.checkInterval, cfg.checkInterval},
		{"max_logins", cfg.maxLogins != old.maxLogins, old.maxLogins, cfg.maxLogins},
	} {
		if s.changed {
			log.Warn("setting changed: restart the agent to apply it", "setting", s.name, "running", s.old, "new", s.new)
		}
	}
	cfg.adminAddress, cfg.shutdownTimeout, cfg.checkInterval = old.adminAddress, old.shutdownTimeout, old.checkInterval
	cfg.maxLogins = old.maxLogins
	d.cfg = cfg
	d.ready.setRoutes(cfg.routes)
	d.secrets.stop()
	d.secrets.start(ctx, cfg.routes, false)
	log.Info("configuration reloaded", "routes", len(cfg.routes), "credential_source_changed", sourceChanged)
}
