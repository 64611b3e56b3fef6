#!/bin/sh
# Vets, builds and tests every example module. Each example is its own Go module, so
# `go test ./...` in the repository root does not reach them.
set -eu
cd "$(dirname "$0")"
for dir in */; do
	[ -f "$dir/go.mod" ] || continue
	echo "== examples/$dir"
	(cd "$dir" && go vet ./... && go build ./... && go test -race -count=1 ./...)
done
