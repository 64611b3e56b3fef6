#!/bin/bash
# Runs the agent in front of a throwaway MariaDB and queries through it with the mariadb
# client, with no password, then tears everything down.
#
# The server listens on 127.0.0.1 only, requires TLS, and uses a CA and certificate made
# here. Needs root (MariaDB runs as the mysql user).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

if [ "$(id -u)" -ne 0 ]; then
	echo "demo-mysql: run as root: MariaDB is started as the mysql system user" >&2
	exit 1
fi
scripts/install-test-deps.sh mariadb

base=$(mktemp -d)
chmod 755 "$base"
agent_pid=""
cleanup() {
	[ -n "$agent_pid" ] && kill -TERM "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null || true
	if [ -f "$base/db/mysqld.pid" ]; then
		pid=$(cat "$base/db/mysqld.pid")
		kill -TERM "$pid" 2>/dev/null || true
		for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
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

echo "== starting MariaDB on 127.0.0.1 (TLS required)"
db_port=$(free_port)
db=$base/db
mkdir -p "$db"
cp "$certs/server.pem" "$certs/server.key" "$certs/ca.pem" "$db/"
chown -R mysql:mysql "$db"
chmod 700 "$db"
chmod 600 "$db/server.key"
mariadb-install-db --no-defaults --user=mysql --datadir="$db/data" \
	--auth-root-authentication-method=socket --skip-test-db >"$db/install.log" 2>&1
mariadbd --no-defaults --user=mysql --datadir="$db/data" --port="$db_port" --bind-address=127.0.0.1 \
	--socket="$db/mysqld.sock" --pid-file="$db/mysqld.pid" --log-error="$db/error.log" --skip-name-resolve \
	--ssl-cert="$db/server.pem" --ssl-key="$db/server.key" --ssl-ca="$db/ca.pem" --require-secure-transport=ON \
	--innodb-buffer-pool-size=64M --skip-log-bin --performance-schema=OFF >/dev/null 2>&1 &
for _ in $(seq 1 100); do
	mariadb-admin --no-defaults --socket="$db/mysqld.sock" -uroot ping >/dev/null 2>&1 && break
	sleep 0.2
done
password=$(openssl rand -hex 16)
mariadb --no-defaults --socket="$db/mysqld.sock" -uroot <<SQL
CREATE USER 'app'@'%' IDENTIFIED BY '$password';
CREATE DATABASE appdb;
GRANT ALL ON appdb.* TO 'app'@'%';
SQL

echo "== writing the agent's config and secrets file"
printf 'secrets:\n  sec_orders: {username: app, password: "%s"}\n' "$password" >"$base/secrets.yaml"
chmod 600 "$base/secrets.yaml"
port=$(free_port)
cat >"$base/agent.yaml" <<YAML
credentials:
  source: file
  path: secrets.yaml
routes:
  - name: orders
    protocol: mysql
    local_port: $port
    upstream_host: 127.0.0.1
    upstream_port: $db_port
    committed_secret_id: sec_orders
    tls:
      ca_file: certs/ca.pem
YAML
sed 's/^/    /' "$base/agent.yaml"

echo "== starting the agent"
start_agent "$base"

echo "== querying through the agent: mariadb -h 127.0.0.1 -P $port appdb (no password)"
mariadb --no-defaults -h 127.0.0.1 -P "$port" --skip-ssl appdb -e \
	"SELECT current_user() AS user, @@version AS server;
	 SHOW SESSION STATUS LIKE 'Ssl_version';"

# The agent writes the session's close line a moment after the client exits.
for _ in $(seq 1 20); do grep -q 'msg="session closed"' "$base/agent.log" && break; sleep 0.1; done
show_agent_log "$base" "$password"
echo "== done; tearing down"
