# Shell functions shared by the demo scripts. Source it; it defines functions only.

# free_port prints a TCP port on 127.0.0.1 that was free a moment ago.
free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# make_certs DIR writes a throwaway CA (ca.pem) and a server certificate and key for
# 127.0.0.1 and localhost (server.pem, server.key), valid for one day. The CA key is
# deleted, so nothing else can be signed with it.
make_certs() {
	mkdir -p "$1"
	(
		cd "$1"
		openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj "/CN=dbproxy demo CA" \
			-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
		openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=localhost" 2>/dev/null
		printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >server.ext
		openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 1 \
			-extfile server.ext 2>/dev/null
		rm -f server.csr server.ext ca.key ca.srl
	)
}

# start_agent BASE starts BASE/agent with BASE/agent.yaml, logging to BASE/agent.log, sets
# agent_pid, and waits until a route listens. On failure it prints the log and exits.
start_agent() {
	"$1/agent" -config "$1/agent.yaml" 2>"$1/agent.log" &
	agent_pid=$!
	for _ in $(seq 1 100); do
		grep -q 'msg="route listening"' "$1/agent.log" && return 0
		kill -0 "$agent_pid" 2>/dev/null || break
		sleep 0.1
	done
	echo "the agent did not start:" >&2
	cat "$1/agent.log" >&2
	exit 1
}

# show_agent_log BASE PASSWORD prints the agent's log and fails if PASSWORD appears in it.
show_agent_log() {
	echo "== the agent's log"
	sed 's/^/    /' "$1/agent.log"
	if grep -qF "$2" "$1/agent.log"; then
		echo "the password appears in the agent's log" >&2
		exit 1
	fi
}
