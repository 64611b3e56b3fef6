# dbproxy: build, demo and test targets. `make test` installs what the tests need (as root),
# so it runs the same on a fresh machine as in CI.

GO        ?= go
CACHE     := $(CURDIR)/.cache
FERRETDB  := $(CACHE)/ferretdb/ferretdb-v1.24.2
MONGOSH   := $(CACHE)/mongosh/node_modules/.bin/mongosh
# Each fuzz target runs this many inputs in `make test`; raise it for a deeper search. A
# count rather than a duration: Go 1.26 can report a spurious "context deadline exceeded"
# when a duration ends while a worker is busy.
FUZZTIME  ?= 100000x

export DBPROXY_FERRETDB := $(FERRETDB)
export DBPROXY_MONGOSH  := $(MONGOSH)

.PHONY: all build demo demo-mysql test deps unit examples fuzz vet bench bench-smoke clean

all: build

build:
	$(GO) build -o bin/agent ./cmd/agent

## demo: run the agent in front of a throwaway PostgreSQL and query through it with psql.
demo:
	scripts/demo.sh

## demo-mysql: the same in front of a throwaway MariaDB, queried with the mariadb client.
demo-mysql:
	scripts/demo-mysql.sh

## test: install the servers, then run vet, every test with the race detector, the example
## modules' tests, short fuzz runs and a short run of the benchmark harness.
test: deps vet unit examples fuzz bench-smoke

deps:
	scripts/install-test-deps.sh
	scripts/build-ferretdb.sh $(FERRETDB)
	scripts/install-mongosh.sh $(CACHE)/mongosh

vet:
	@unformatted=$$(gofmt -l . | grep -v '^.cache/'); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...

unit:
	$(GO) test -race -count=1 -timeout 30m ./...

examples:
	examples/test.sh

fuzz:
	scripts/fuzz.sh $(FUZZTIME)

## bench: compare the agent with direct connections and PgBouncer (about 16 min on 2 cores);
## writes bench/results/full.md.
bench: deps
	bench/run.sh full

## bench-smoke: a short harness run (about 1 min), so the harness keeps working.
bench-smoke:
	bench/run.sh smoke

clean:
	rm -rf bin
