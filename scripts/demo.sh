#!/bin/bash
# Runs the agent in front of a throwaway PostgreSQL and queries through it with psql, with no
# password and no user name on the client side, then tears everything down.
#
# The server listens on 127.0.0.1 only, accepts TLS with scram-sha-256 and nothing else, and
# uses a CA and certificate made here. Needs root (PostgreSQL runs as the postgres user).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

if [ "$(id -u)" -ne 0 ]; then
	echo "demo: run as root: PostgreSQL is started as the postgres system user" >&2
	exit 1
fi
scripts/install-test-deps.sh postgres

PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
base=$(mktemp -d)
chmod 755 "$base"
agent_pid=""
cleanup() {
	[ -n "$agent_pid" ] && kill -TERM "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null || true
	if [ -f "$base/pg/data/postmaster.pid" ]; then
		runuser -u postgres -- "$PGBIN/pg_ctl" -D "$base/pg/data" -m fast -w stop >/dev/null 2>&1 || true
	fi
	rm -rf "$base"
}
trap cleanup EXIT

echo "== building the agent"
go build -o "$base/agent" ./cmd/agent
# The servers run as their own users, who may not be able to enter this checkout.
cd "$base"

echo "== making a CA and a server certificate for 127.0.0.1"
certs=$base/certs
make_certs "$certs"

echo "== starting PostgreSQL on 127.0.0.1 (TLS and scram-sha-256 only)"
pg_port=$(free_port)
pg=$base/pg
mkdir -p "$pg"
cp "$certs/server.pem" "$certs/server.key" "$pg/"
chown -R postgres:postgres "$pg"
chmod 700 "$pg"
chmod 600 "$pg/server.key"
runuser -u postgres -- "$PGBIN/initdb" -D "$pg/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
cat >>"$pg/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = '$pg'
ssl = on
ssl_cert_file = '$pg/server.pem'
ssl_key_file = '$pg/server.key'
password_encryption = 'scram-sha-256'
CONF
cat >"$pg/data/pg_hba.conf" <<HBA
local     all all                trust
hostssl   all all 127.0.0.1/32   scram-sha-256
hostnossl all all 0.0.0.0/0      reject
HBA
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$pg/data" -l "$pg/server.log" -w start >/dev/null
password=$(openssl rand -hex 16)
runuser -u postgres -- psql -h "$pg" -p "$pg_port" -U postgres -d postgres -XAtq -v ON_ERROR_STOP=1 \
	-c "CREATE ROLE app LOGIN PASSWORD '$password'" -c "CREATE DATABASE appdb OWNER app"

echo "== writing the agent's config and secrets file"
cat >"$base/secrets.yaml" <<YAML
secrets:
  sec_orders: {username: app, password: "$password"}
YAML
chmod 600 "$base/secrets.yaml"
cat >"$base/agent.yaml" <<YAML
credentials:
  source: file
  path: secrets.yaml
routes:
  - name: orders
    protocol: postgres
    upstream_host: 127.0.0.1
    upstream_port: $pg_port
    committed_secret_id: sec_orders
    tls:
      ca_file: certs/ca.pem
YAML
sed 's/^/    /' "$base/agent.yaml"

echo "== starting the agent"
start_agent "$base"
port=$(sed -n 's/.*msg="route listening".*listen=127\.0\.0\.1:\([0-9]*\).*/\1/p' "$base/agent.log" | head -1)
echo "   agent listening on 127.0.0.1:$port"

echo "== querying through the agent: psql \"host=127.0.0.1 port=$port dbname=appdb\" (no password, no user)"
env -u PGPASSWORD -u PGUSER psql "host=127.0.0.1 port=$port dbname=appdb" -X -c \
	"SELECT current_user, s.ssl AS upstream_tls, s.version AS tls_version, left(version(), 32) AS server
	   FROM pg_stat_ssl s WHERE s.pid = pg_backend_pid()"

# The agent writes the session's close line a moment after the client exits.
for _ in $(seq 1 20); do grep -q 'msg="session closed"' "$base/agent.log" && break; sleep 0.1; done
show_agent_log "$base" "$password"
echo "== done; tearing down"
