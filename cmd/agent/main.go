// Command agent runs dbproxy's routes from a configuration file: for each route it listens
// on loopback, logs in to the upstream database with credentials from the configured source,
// and relays the session, so applications connect with no password.
//
// Usage:
//
//	agent -config agent.yaml [-log-level info] [-log-format text]
//
// SIGINT and SIGTERM stop accepting connections and let open sessions finish for up to the
// configured shutdown_timeout.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/knoxcall/dbproxy/credsource"
	"github.com/knoxcall/dbproxy/knoxproxy"
)

// Exit codes.
const (
	exitOK     = 0
	exitFailed = 1
	exitUsage  = 2
)

// errUsage marks errors in the command line or the configuration: the agent exits with
// exitUsage before binding anything.
var errUsage = errors.New("usage")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	switch {
	case err == nil:
		os.Exit(exitOK)
	case errors.Is(err, flag.ErrHelp):
		os.Exit(exitOK)
	case errors.Is(err, errUsage):
		fmt.Fprintln(os.Stderr, "agent:", err)
		os.Exit(exitUsage)
	default:
		fmt.Fprintln(os.Stderr, "agent:", err)
		os.Exit(exitFailed)
	}
}

// run parses args, loads the configuration and serves until ctx ends.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "path of the configuration file (YAML or JSON); required")
	logLevel := fs.String("log-level", "info", "minimum level of log lines: debug, info, warn or error")
	logFormat := fs.String("log-format", "text", "log line format: text or json")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if *showVersion {
		fmt.Fprintln(stdout, "dbproxy agent", version())
		return nil
	}
	if *configPath == "" {
		return fmt.Errorf("%w: -config is required", errUsage)
	}
	logger, err := newLogger(stderr, *logLevel, *logFormat)
	if err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}

	cfg, err := loadConfig(*configPath)
	if err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	srv, err := knoxproxy.New(knoxproxy.Config{
		Routes:          cfg.routes,
		Credentials:     credsource.NewCache(cfg.source, cfg.cacheTTL),
		Logger:          logger,
		ShutdownTimeout: cfg.shutdownTimeout,
	})
	if err != nil {
		return fmt.Errorf("%w: config: %v", errUsage, err)
	}
	for _, w := range cfg.warnings {
		logger.Warn(w)
	}
	logger.Info("agent starting", "version", version(), "config", *configPath, "routes", len(cfg.routes))
	if err := srv.Serve(ctx); err != nil {
		return err
	}
	logger.Info("agent stopped")
	return nil
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("-log-level: invalid level %q (want debug, info, warn or error)", level)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("-log-format: invalid format %q (want text or json)", format)
}

// version returns the module version the binary was built from, or "devel".
func version() string {
	if info, ok := debug.ReadBuildInfo(); ok && info.Main.Version != "" && info.Main.Version != "(devel)" {
		return info.Main.Version
	}
	return "devel"
}
