// Command embed is a Go service that runs a dbproxy route in-process: it serves its own
// HTTP API and, on the side, lets local tools reach PostgreSQL through 127.0.0.1:15432
// without a password. Credentials come from the environment (DBPROXY_SECRET_ORDERS_*).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/knoxcall/dbproxy/credsource"
	"github.com/knoxcall/dbproxy/knoxproxy"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "embed:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("embed", flag.ContinueOnError)
	upstream := fs.String("upstream", "db.internal", "PostgreSQL host name or address, without a port")
	upstreamPort := fs.Int("upstream-port", 5432, "PostgreSQL port")
	localPort := fs.Int("port", 15432, "loopback port of the route")
	caFile := fs.String("ca-file", "", "PEM CA file for the PostgreSQL certificate; empty means the system roots")
	listen := fs.String("http", "127.0.0.1:8080", "address of the service's own HTTP API")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	srv, err := knoxproxy.New(knoxproxy.Config{
		Routes: []knoxproxy.Route{{
			Name: "orders", Protocol: "postgres", LocalPort: *localPort,
			UpstreamHost: *upstream, UpstreamPort: *upstreamPort, SecretID: "orders",
			AllowedUIDs:    []uint32{uint32(os.Getuid())},
			MaxConnections: 20,
			TLS:            knoxproxy.TLS{CAFile: *caFile},
		}},
		Credentials: credsource.NewCache(credsource.Env{}, 5*time.Minute),
		Logger:      log,
	})
	if err != nil {
		return err
	}

	// The service's own API reports the proxy's live figures.
	mux := http.NewServeMux()
	mux.HandleFunc("GET /proxy", func(w http.ResponseWriter, _ *http.Request) {
		for _, st := range srv.Stats() {
			fmt.Fprintf(w, "%s %s open=%d to_upstream=%d to_client=%d\n",
				st.Name, st.Listen, st.OpenSessions, st.BytesToUpstream, st.BytesToClient)
		}
	})
	api := &http.Server{Addr: *listen, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		api.Shutdown(context.Background())
	}()
	go func() {
		if err := api.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http api failed", "err", err)
		}
	}()

	// Serve returns after ctx ends and the open sessions have drained.
	return srv.Serve(ctx)
}
