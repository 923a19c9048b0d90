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
# HTTPS with a CA the new cluster makes, unless the administrator gives their own
# (HERON_CA_CERT and HERON_CA_KEY, PEM files; used when the cluster has no CA yet), or asks
# for plain HTTP with HERON_INSECURE_HTTP=1.
if [ -n "${HERON_CA_CERT:-}" ] || [ -n "${HERON_CA_KEY:-}" ]; then
  HEROND+=(--ca-cert "${HERON_CA_CERT:?HERON_CA_KEY needs HERON_CA_CERT}"
           --ca-key "${HERON_CA_KEY:?HERON_CA_CERT needs HERON_CA_KEY}")
fi
SCHEME=https
if [ "${HERON_INSECURE_HTTP:-}" = 1 ]; then
  HEROND+=(--insecure-http)
  SCHEME=http
fi
for name in ${HERON_CERT_NAMES:-}; do  # more names/addresses for this node's certificate
  HEROND+=(--cert-name "$name")
done
# Three ways to take part in the ConfigDB:
#  - nothing set: a single-node cluster with its own etcd member, over TLS with client
#    certificates of the cluster CA (made here first; HERON_PLAIN_ETCD=1: plain etcd);
#  - HERON_ETCD_INITIAL_CLUSTER=n1=https://h1:2380,n2=...,n3=...: one of 3 or 5 voting
#    members (run on each of them, with the same HERON_CA_CERT and HERON_CA_KEY for TLS; set
#    HERON_ETCD to all their client endpoints; http:// peer URLs: plain etcd);
#  - HERON_ETCD=https://h1:2379,... alone: a client of an existing cluster; with etcd over
#    TLS, with HERON_JOIN, HERON_JOIN_TOKEN and HERON_CA_FINGERPRINT (`heron cluster join` on
#    the cluster prints the whole line).
# A node installed before etcd's TLS (its etcd data here, no etcd-tls mark) stays plain:
# docs/operations.md says how to convert a cluster.
if [ -n "${HERON_ETCD_INITIAL_CLUSTER:-}" ]; then
  HEROND+=(--embedded-etcd --etcd-initial-cluster "$HERON_ETCD_INITIAL_CLUSTER")
  [ -n "${HERON_ETCD:-}" ] && HEROND+=(--etcd "$HERON_ETCD")
  [[ $HERON_ETCD_INITIAL_CLUSTER == *https://* ]] && HEROND+=(--etcd-tls)
elif [ -n "${HERON_ETCD:-}" ]; then
  HEROND+=(--etcd "$HERON_ETCD")
  if [ -n "${HERON_JOIN_TOKEN:-}" ]; then
    HEROND+=(--etcd-tls --join "${HERON_JOIN:?HERON_JOIN_TOKEN needs HERON_JOIN}"
             --join-token "$HERON_JOIN_TOKEN"
             --ca-fingerprint "${HERON_CA_FINGERPRINT:?HERON_JOIN_TOKEN needs HERON_CA_FINGERPRINT}")
  fi
else
  HEROND+=(--embedded-etcd)
  if [ "${HERON_PLAIN_ETCD:-}" != 1 ] && { [ -f "$STATE/etcd-tls" ] || [ ! -d "$STATE/etcd" ]; }; then
    HEROND+=(--etcd-tls)
    touch "$STATE/etcd-tls"  # this node's etcd speaks TLS from its start
  fi
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

HOST=$ADDRESS
[[ $HOST == *:* ]] && HOST="[$HOST]"
URL="$SCHEME://$HOST:$PORT"
CA="$STATE/tls/ca-cert.pem"  # written by the agent with its certificate
answers() {
  if [ "$SCHEME" = https ]; then
    [ -f "$CA" ] && curl -fsS --cacert "$CA" "$URL/api/v1/openapi.json" >/dev/null 2>&1
  else
    curl -fsS "$URL/api/v1/openapi.json" >/dev/null 2>&1
  fi
}
for _ in $(seq 1 300); do
  answers && break
  sleep 0.2  # waiting for the agent to answer, at most a minute
done
answers || { echo "herond did not start; see $STATE/herond.log" >&2; exit 1; }

echo "Heron is running on $NAME: API $URL/api/v1 (docs at $URL/api/v1/docs)"
if [ "$SCHEME" = https ]; then
  FINGERPRINT=$(.venv/bin/python -c 'import sys; from heron.tls import fingerprint; print(fingerprint(open(sys.argv[1]).read()))' "$CA")
  echo "cluster CA: $CA"
  echo "cluster CA SHA-256 fingerprint: $FINGERPRINT"
  echo "  (browsers: trust $CA, or compare this fingerprint before accepting the certificate)"
else
  echo "WARNING: plain HTTP (HERON_INSECURE_HTTP=1): passwords and tokens cross the network readable"
fi
if [[ " ${HEROND[*]} " == *" --etcd-tls "* ]] || [[ "${HERON_ETCD:-}" == https://* ]]; then
  echo "etcd: TLS with client certificates of the cluster CA (files in $STATE/tls)"
  echo "  add a node: 'heron cluster join' prints its command line with a one-time token"
else
  echo "WARNING: etcd is plain: keep its ports reachable from the nodes only (docs/operations.md: converting)"
fi
echo "admin password: $(cat "$STATE/admin-password")"
echo "CLI: $PWD/.venv/bin/heron login --url $URL --username admin${FINGERPRINT:+ --ca-fingerprint $FINGERPRINT}"
