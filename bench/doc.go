// Package bench measures what the agent costs over connecting to a database directly.
//
// The package holds no library code. Its tests are the benchmark harness behind
// `make bench`. TestHarness starts PostgreSQL, PgBouncer, MariaDB and Redis on loopback with
// TLS and builds and runs the real agent binary in front of them. It then drives each path
// side by side with pgbench, redis-benchmark and Go clients. It runs only when asked,
// because a full run takes several minutes:
//
//	bench/run.sh full    # the full run, results in bench/results/full.md
//	bench/run.sh smoke   # a few seconds per step, to keep the harness working
//
// The Go benchmarks in this package (go test -bench . -benchmem ./bench) time each
// protocol's Handshake against a real or in-process server.
package bench
