#!/bin/bash
# Runs every fuzz target in the module for the given budget each: a count of inputs such as
# 100000x (the default) or a duration such as 30s. Inputs that fail are written under the
# package's testdata/fuzz, where `go test` replays them.
#
# Go 1.26 can fail a duration-bound run with "context deadline exceeded" and no failing
# input when the time ends while a worker is busy. A count does not have that race.
#
# usage: scripts/fuzz.sh [BUDGET]
set -euo pipefail
cd "$(dirname "$0")/.."
time=${1:-100000x}
for pkg in $(go list ./...); do
	dir=$(go list -f '{{.Dir}}' "$pkg")
	for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //'); do
		echo "fuzz $pkg $target ($time)"
		go test -run '^$' -fuzz "^${target}\$" -fuzztime "$time" "$pkg"
	done
done
