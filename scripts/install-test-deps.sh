#!/bin/bash
# Installs the database servers and clients the tests and the demo use, from Debian's
# packages, skipping what is already there. Run as root.
#
# usage: scripts/install-test-deps.sh [postgres] [mariadb] [redis] [pgbouncer]   (no argument: all)
set -euo pipefail

want=("$@")
[ ${#want[@]} -eq 0 ] && want=(postgres mariadb redis pgbouncer)

packages=()
for w in "${want[@]}"; do
	case $w in
	postgres) ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v psql >/dev/null || packages+=(postgresql) ;;
	mariadb) command -v mariadbd >/dev/null || packages+=(mariadb-server) ;;
	redis) command -v redis-server >/dev/null || packages+=(redis-server) ;;
	pgbouncer) command -v pgbouncer >/dev/null || packages+=(pgbouncer) ;;
	*) echo "install-test-deps: unknown component $w" >&2; exit 2 ;;
	esac
done
[ ${#packages[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
	echo "install-test-deps: missing ${packages[*]}; run as root or install them" >&2
	exit 1
fi
# Keep the packages' own services from starting on the default ports while installing:
# the tests and the demo start their servers themselves.
if [ ! -e /usr/sbin/policy-rc.d ]; then
	printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
	chmod +x /usr/sbin/policy-rc.d
	trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
echo "installing ${packages[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
