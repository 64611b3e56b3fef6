#!/bin/bash
# Installs the MongoDB shell (mongosh, from npm) into the directory given as the first argument,
# for the MongoDB client tests, and does nothing when that version is already there. The
# binary ends up at DIR/node_modules/.bin/mongosh.
#
# usage: scripts/install-mongosh.sh DIR
#   example: scripts/install-mongosh.sh .cache/mongosh
#
# Needs node and npm. npm 11 skips the install scripts of a few optional native helpers
# (node-gyp builds); mongosh works without them. A cold install takes about half a minute and
# about 150 MB.
set -euo pipefail

if [ $# -ne 1 ]; then
	echo "usage: $0 DIR" >&2
	exit 2
fi
MONGOSH_VERSION=2.12.0
dir=$1
bin=$dir/node_modules/.bin/mongosh

if [ -x "$bin" ] && [ "$(cat "$dir/.mongosh-version" 2>/dev/null)" = "$MONGOSH_VERSION" ]; then
	echo "mongosh $MONGOSH_VERSION already installed: $bin"
	exit 0
fi

mkdir -p "$dir"
if [ ! -f "$dir/package.json" ]; then
	echo '{"private": true}' >"$dir/package.json"
fi
(cd "$dir" && npm install --no-audit --no-fund --no-save "mongosh@$MONGOSH_VERSION")
echo "$MONGOSH_VERSION" >"$dir/.mongosh-version"
echo "mongosh $MONGOSH_VERSION installed: $bin"
