#!/bin/bash
# Runs the benchmark harness: real servers on loopback with TLS, the agent built from this
# tree, and the comparisons of BENCHMARKS.md. Needs root, PostgreSQL with pgbench,
# PgBouncer, MariaDB and Redis with redis-benchmark; scripts/install-test-deps.sh and
# `apt-get install pgbouncer` provide them.
#
# usage: bench/run.sh [smoke|full] [extra go test flags, e.g. -bench.only=pgbench,copy]
#   smoke  a few seconds per step (about a minute in all), to keep the harness working
#   full   the figures of BENCHMARKS.md (about 16 minutes on 2 cores), into bench/results/full.md
#          (a relative -bench.out path is taken from bench/)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-full}
shift || true
case $mode in
smoke) timeout=20m ;;
full) timeout=90m ;;
*) echo "usage: bench/run.sh [smoke|full] [go test flags]" >&2; exit 2 ;;
esac
go test -count=1 -timeout "$timeout" -run '^TestHarness$' -v ./bench \
	-args -bench.mode="$mode" "$@"
