#!/usr/bin/env bash
# Install Heron on this Debian 12 machine and start a single-node cluster:
# an embedded etcd member, the node agent with its API, and an admin user.
set -euo pipefail
cd "$(dirname "$0")"
[ "$(id -u)" = 0 ] || { echo "install.sh: run as root" >&2; exit 1; }

bash scripts/install-deps

STATE=${HERON_STATE_DIR:-/var/lib/heron}
PORT=${HERON_API_PORT:-8443}
ADDRESS=${HERON_ADDRESS:-127.0.0.1}
NAME=${HERON_NODE_NAME:-$(hostname -s | tr 'A-Z' 'a-z')}
mkdir -p "$STATE"
HEROND=("$PWD/.venv/bin/herond" --name "$NAME" --state-dir "$STATE" --address "$ADDRESS"
        --api-port "$PORT" --admin-password-file "$STATE/admin-password")
# Three ways to take part in the ConfigDB:
#  - nothing set: a single-node cluster with its own etcd member;
#  - HERON_ETCD_INITIAL_CLUSTER=n1=http://h1:2380,n2=...,n3=...: one of 3 or 5 voting members
#    (run on each of them; set HERON_ETCD to all their client endpoints);
#  - HERON_ETCD=h1:2379,h2:2379,h3:2379 alone: a client of an existing cluster.
if [ -n "${HERON_ETCD_INITIAL_CLUSTER:-}" ]; then
  HEROND+=(--embedded-etcd --etcd-initial-cluster "$HERON_ETCD_INITIAL_CLUSTER")
  [ -n "${HERON_ETCD:-}" ] && HEROND+=(--etcd "$HERON_ETCD")
elif [ -n "${HERON_ETCD:-}" ]; then
  HEROND+=(--etcd "$HERON_ETCD")
else
  HEROND+=(--embedded-etcd)
fi
if [ -d /run/systemd/system ]; then
  cat > /etc/systemd/system/herond.service <<UNIT
[Unit]
Description=Heron node agent
After=network-online.target

[Service]
ExecStart=${HEROND[*]}
Restart=always
# The agent may restart at will: VMs and etcd run in their own processes.
KillMode=process

[Install]
WantedBy=multi-user.target
UNIT
  systemctl daemon-reload
  systemctl enable --now herond.service
elif ! pgrep -f "herond --name $NAME" >/dev/null; then
  # No systemd (a container): run the agent detached, logging to the state directory.
  setsid "${HEROND[@]}" >>"$STATE/herond.log" 2>&1 < /dev/null &
fi

URL="http://$ADDRESS:$PORT"
for _ in $(seq 1 300); do
  curl -fsS "$URL/api/v1/openapi.json" >/dev/null 2>&1 && break
  sleep 0.2  # waiting for the agent to answer, at most a minute
done
curl -fsS "$URL/api/v1/openapi.json" >/dev/null || { echo "herond did not start; see $STATE/herond.log" >&2; exit 1; }

echo "Heron is running on $NAME: API $URL/api/v1 (docs at $URL/api/v1/docs)"
echo "admin password: $(cat "$STATE/admin-password")"
echo "CLI: $PWD/.venv/bin/heron login --url $URL --username admin"
