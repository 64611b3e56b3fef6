// Command agent runs dbproxy's routes from a configuration file: for each route it listens
// on loopback, logs in to the upstream database with credentials from the configured source,
// and relays the session, so applications connect with no password.
//
// Usage:
//
//	agent -config agent.yaml [-log-level info] [-log-format text]
//	agent check -config agent.yaml [-timeout 30s]
//	agent help
//
// SIGINT and SIGTERM turn /readyz to 503, keep accepting for shutdown_delay, then stop
// accepting and let open sessions finish for up to shutdown_timeout. The exit status is 0
// when every session ended by itself and 1 when some had to be closed. A second SIGINT or
// SIGTERM ends the agent at once. SIGHUP, or a change
// of the configuration file, reloads the configuration.
//
// The check subcommand logs in to the upstream of every route through a temporary
// listener and prints a table of the results; its exit status is 1 when any route fails.
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
)

// Exit codes.
const (
	exitOK     = 0
	exitFailed = 1
	exitUsage  = 2
)

// errUsage marks errors in the command line or the configuration: the agent exits with
// exitUsage before binding anything. Test with errors.Is; its text is not shown.
var errUsage = errors.New("invalid command line or configuration")

// usageError is an error that matches errUsage and reads as the error it wraps.
type usageError struct{ err error }

func (e usageError) Error() string        { return e.err.Error() }
func (e usageError) Unwrap() error        { return e.err }
func (e usageError) Is(target error) bool { return target == errUsage }

// loggedError is an error that run has already written to the log, so main only sets the
// exit code.
type loggedError struct{ err error }

func (e loggedError) Error() string { return e.err.Error() }
func (e loggedError) Unwrap() error { return e.err }

// usagef returns a usage error formatted like fmt.Errorf.
func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// After the first signal, a second one ends the process at once with the default
	// action, instead of waiting for the shutdown delay and the drain.
	go func() {
		<-ctx.Done()
		stop()
	}()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	switch {
	case err == nil:
		os.Exit(exitOK)
	case errors.Is(err, flag.ErrHelp):
		os.Exit(exitOK)
	case errors.Is(err, errUsage):
		fmt.Fprintln(os.Stderr, "agent:", err)
		os.Exit(exitUsage)
	case errors.As(err, new(loggedError)):
		os.Exit(exitFailed)
	default:
		fmt.Fprintln(os.Stderr, "agent:", err)
		os.Exit(exitFailed)
	}
}

// run parses args, loads the configuration and serves until ctx ends.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "check" {
		return runCheck(ctx, args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "help" {
		args = []string{"-h"}
	}
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "path of the configuration file (YAML or JSON); required")
	logLevel := fs.String("log-level", "info", "minimum level of log lines: debug, info, warn or error")
	logFormat := fs.String("log-format", "text", "log line format: text or json")
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprint(stderr, "usage: agent -config FILE [flags]          serve the configured routes\n"+
			"       agent check -config FILE [-timeout 30s]   log in to every route's upstream once\n"+
			"       agent help                                 print this message\n\nflags:\n")
		fs.PrintDefaults()
		fmt.Fprint(stderr, "\nRun 'agent check -h' for the flags of check.\n")
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usagef("%v", err)
	}
	if *showVersion {
		fmt.Fprintln(stdout, "dbproxy agent", version())
		return nil
	}
	if *configPath == "" {
		fs.Usage()
		return usagef("-config is required")
	}
	logger, err := newLogger(stderr, *logLevel, *logFormat)
	if err != nil {
		return usagef("%v", err)
	}

	cfg, err := loadConfig(*configPath)
	if err != nil {
		return usagef("%v", err)
	}
	if err := serve(ctx, *configPath, cfg, logger); err != nil {
		if errors.Is(err, errUsage) {
			return err
		}
		logger.Error("agent stopped with an error", "err", err)
		return loggedError{err}
	}
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
