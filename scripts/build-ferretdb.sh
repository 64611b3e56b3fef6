#!/bin/bash
# Builds the FerretDB command that the MongoDB tests run, into the binary path given as the
# first argument, and does nothing when a working binary is already there.
#
# usage: scripts/build-ferretdb.sh OUTBIN
#   example: scripts/build-ferretdb.sh .cache/ferretdb/ferretdb-v1.24.2
#
# Why not `go install github.com/FerretDB/FerretDB/cmd/ferretdb@v1.24.2`: that binary panics at
# start ("Invalid build/version/version.txt file content"), because the module zip lacks the
# generated build/version/version.txt, and `go build -overlay` refuses files under GOMODCACHE.
# So the script copies the downloaded module to a temporary directory, adds version.txt there
# and builds that copy. Neither the source nor the binary belong in the repository.
#
# Cold (empty Go caches) this takes about a minute and fills about 1 GB of module and build
# cache; with warm caches a few seconds.
set -euo pipefail

if [ $# -ne 1 ]; then
	echo "usage: $0 OUTBIN" >&2
	exit 2
fi
FERRETDB_VERSION=v1.24.2
out=$1
case $out in
/*) ;;
*) out=$PWD/$out ;;
esac

if [ -x "$out" ] && "$out" --version >/dev/null 2>&1; then
	echo "ferretdb $FERRETDB_VERSION already built: $out"
	exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Run outside any module, so that no go.mod or go.sum is touched.
module_dir=$(cd "$work" && go mod download -json "github.com/FerretDB/FerretDB@$FERRETDB_VERSION" |
	sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')
if [ -z "$module_dir" ] || [ ! -d "$module_dir" ]; then
	echo "go mod download did not report a directory for FerretDB $FERRETDB_VERSION" >&2
	exit 1
fi
src=$work/src
mkdir "$src"
cp -r "$module_dir/." "$src/"
chmod -R u+w "$src"
echo "$FERRETDB_VERSION" >"$src/build/version/version.txt"

mkdir -p "$(dirname "$out")"
(cd "$src" && GOFLAGS=-buildvcs=false go build -trimpath -o "$out.tmp" ./cmd/ferretdb)
mv "$out.tmp" "$out"
"$out" --version | head -n 1
