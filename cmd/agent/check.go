package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"

	"github.com/knoxcall/dbproxy/credsource"
	"github.com/knoxcall/dbproxy/knoxproxy"
)

// defaultCheckTimeout bounds the check of one route when -timeout is not given.
const defaultCheckTimeout = 30 * time.Second

// errCheckFailed is returned by runCheck when at least one route failed.
var errCheckFailed = errors.New("check failed")

// checkResult is one row of the check table.
type checkResult struct {
	route, protocol, upstream string
	latency                   time.Duration
	detail                    string
	err                       error
}

// runCheck runs `agent check`: it serves every route of the configuration on a free
// loopback port, with no UID allowlist and no connection limit, logs in through each with
// the protocol's Go driver, and prints one row per route.
func runCheck(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("agent check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "path of the configuration file (YAML or JSON); required")
	timeout := fs.Duration("timeout", defaultCheckTimeout, "time limit for the check of one route, such as 30s")
	logLevel := fs.String("log-level", "none", "minimum level of the agent's log lines on stderr: debug, info, warn, error or none")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usagef("%v", err)
	}
	if *configPath == "" {
		return usagef("-config is required")
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	logger := slog.New(slog.DiscardHandler)
	if *logLevel != "none" {
		var err error
		if logger, err = newLogger(stderr, *logLevel, "text"); err != nil {
			return usagef("%v", err)
		}
	}
	cfg, err := loadConfig(*configPath)
	if err != nil {
		return usagef("%v", err)
	}
	for _, w := range cfg.warnings {
		logger.Warn(w)
	}

	routes, err := checkRoutes(cfg.routes)
	if err != nil {
		return err
	}
	creds := newSwitchableSource(cfg, logger)
	srv, err := knoxproxy.New(knoxproxy.Config{
		Routes:      routes,
		Credentials: creds,
		Logger:      logger,
	})
	if err != nil {
		return usagef("config: %v", err)
	}
	serveCtx, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(serveCtx) }()
	defer func() {
		stop()
		<-served
	}()
	select {
	case err := <-served:
		return fmt.Errorf("start routes: %w", err)
	case <-srv.Ready():
	}

	results := make([]checkResult, len(routes))
	var wg sync.WaitGroup
	for i, r := range routes {
		wg.Go(func() {
			results[i] = checkRoute(ctx, r, srv.Addr(r.Name).String(), creds, *timeout)
		})
	}
	wg.Wait()

	failed := printCheckTable(stdout, results)
	if failed > 0 {
		return fmt.Errorf("%w: %d of %d routes failed", errCheckFailed, failed, len(results))
	}
	return nil
}

// checkRoutes returns copies of routes that listen on free ports of 127.0.0.1 and admit any
// local user, so that the check neither collides with a running agent nor is rejected by
// the allowlist or a connection limit.
func checkRoutes(routes []knoxproxy.Route) ([]knoxproxy.Route, error) {
	out := make([]knoxproxy.Route, len(routes))
	for i, r := range routes {
		port, err := freeLoopbackPort()
		if err != nil {
			return nil, fmt.Errorf("route %q: pick a free port: %w", r.Name, err)
		}
		r.ListenAddress, r.LocalPort, r.UnixSocket = "127.0.0.1", port, ""
		r.AllowedUIDs, r.MaxConnections = nil, 0
		out[i] = r
	}
	return out, nil
}

func freeLoopbackPort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func checkRoute(ctx context.Context, r knoxproxy.Route, addr string, creds credsource.Source, timeout time.Duration) checkResult {
	res := checkResult{route: r.Name, protocol: r.Protocol,
		upstream: net.JoinHostPort(r.UpstreamHost, strconv.Itoa(r.UpstreamPort))}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	// The fetch comes first, and its error is printed in full. A client through the route
	// only learns that the source failed, because the source's message can contain anything.
	for _, id := range []string{r.SecretID, r.TLS.ClientCertSecretID} {
		if id == "" {
			continue
		}
		if _, err := creds.Fetch(ctx, id); err != nil {
			res.err = fmt.Errorf("agent error: fetch credentials %q: %w", id, err)
			res.latency = time.Since(start)
			return res
		}
	}
	// Each driver also gets timeout for its own dial and I/O limits, whose defaults (5 s
	// for go-redis, 30 s for the MongoDB driver's server selection) would otherwise end
	// the check before -timeout does.
	switch r.Protocol {
	case "postgres":
		res.detail, res.err = checkPostgres(ctx, addr, timeout)
	case "mysql":
		res.err = checkMySQL(ctx, addr, timeout)
	case "redis":
		res.err = checkRedis(ctx, addr, timeout)
	case "mongodb":
		res.err = checkMongoDB(ctx, addr, timeout)
	default:
		res.err = fmt.Errorf("no check for protocol %q", r.Protocol)
	}
	res.latency = time.Since(start)
	return res
}

// invalidCatalogName is PostgreSQL's SQLSTATE for a database that does not exist.
const invalidCatalogName = "3D000"

// checkPostgres connects without a database name, so the agent requests the stored user's
// database, as libpq does. The server reports a missing database only after the
// authentication succeeded, so that counts as a pass with a note.
func checkPostgres(ctx context.Context, addr string, timeout time.Duration) (string, error) {
	host, port, _ := net.SplitHostPort(addr)
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%s sslmode=disable application_name=dbproxy-check", host, port))
	if err != nil {
		return "", err
	}
	cfg.User, cfg.Database, cfg.Password = "dbproxy-check", "", ""
	cfg.ConnectTimeout = timeout
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok && pgErr.Code == invalidCatalogName {
			return "authenticated; " + pgErr.Message, nil
		}
		return "", err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var user string
	if err := conn.QueryRow(ctx, "select current_user").Scan(&user); err != nil {
		return "", err
	}
	return "user " + user, nil
}

func checkMySQL(ctx context.Context, addr string, timeout time.Duration) error {
	cfg := mysql.NewConfig()
	cfg.User, cfg.Net, cfg.Addr = "dbproxy-check", "tcp", addr
	cfg.Timeout, cfg.ReadTimeout, cfg.WriteTimeout = timeout, timeout, timeout
	connector, err := mysql.NewConnector(cfg)
	if err != nil {
		return err
	}
	db := sql.OpenDB(connector)
	defer db.Close()
	var one int
	return db.QueryRowContext(ctx, "SELECT 1").Scan(&one)
}

func checkRedis(ctx context.Context, addr string, timeout time.Duration) error {
	client := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DisableIdentity: true,
		DialTimeout: timeout, ReadTimeout: timeout, WriteTimeout: timeout, ContextTimeoutEnabled: true})
	defer client.Close()
	return client.Ping(ctx).Err()
}

func checkMongoDB(ctx context.Context, addr string, timeout time.Duration) error {
	client, err := mongo.Connect(ctx, options.Client().
		ApplyURI("mongodb://"+addr+"/?directConnection=true").
		SetRetryReads(false).SetRetryWrites(false).
		SetConnectTimeout(timeout).SetServerSelectionTimeout(timeout).SetTimeout(timeout))
	if err != nil {
		return err
	}
	defer client.Disconnect(context.WithoutCancel(ctx))
	return client.Database("admin").RunCommand(ctx, bson.D{{Key: "ping", Value: 1}}).Err()
}

// printCheckTable writes the results and returns how many failed.
func printCheckTable(w io.Writer, results []checkResult) int {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ROUTE\tPROTOCOL\tUPSTREAM\tRESULT\tLATENCY\tDETAIL")
	failed := 0
	for _, r := range results {
		result, detail := "ok", r.detail
		if r.err != nil {
			result, detail = "FAIL", describeCheckError(r.err)
			failed++
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.route, r.protocol, r.upstream, result,
			r.latency.Round(time.Millisecond), detail)
	}
	tw.Flush()
	return failed
}

// agentErrorMarker is part of every error message that the agent sends to a client in the
// protocol's error format, such as `FATAL: dbproxy route "orders": dial upstream ...`.
const agentErrorMarker = "dbproxy route "

// describeCheckError returns err on one line. An error that the agent sent is labelled as
// the agent's, because drivers label every error they receive as the server's (pgx writes
// "server error: FATAL: ...").
func describeCheckError(err error) string {
	s := oneLine(err.Error())
	if !strings.Contains(s, agentErrorMarker) {
		return s
	}
	return "agent error: " + strings.TrimPrefix(s, "server error: ")
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	// pgx puts the check's own user name and the temporary listener's address before the
	// server's message, which only the message explains.
	return pgxConnectPrefix.ReplaceAllString(s, "")
}

// pgxConnectPrefix matches pgx's "failed to connect to `user=... database=...`: 127.0.0.1:5432
// (127.0.0.1): " prefix.
var pgxConnectPrefix = regexp.MustCompile("^failed to connect to `[^`]*`: \\S+ \\([^)]*\\): ")
