#!/usr/bin/env bash
# Manual check of the MMDS stack against the host's real Linux TCP stack and the
# same busybox wget the guest has: runs examples/tap_server on a tap in a private
# network namespace and fetches metadata through it. Needs root. Not part of
# `cargo test` (it needs CAP_NET_ADMIN and a netns).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
VERSION=${1:-V1}
NS=mmds-check-$$
cargo build -q -p mmds --example tap_server
BIN=target/debug/examples/tap_server
ip netns add "$NS"
cleanup() { [[ -n ${PID:-} ]] && kill "$PID" 2>/dev/null; ip netns del "$NS"; }
trap cleanup EXIT
ip netns exec "$NS" "$BIN" mmds0 "$VERSION" &
PID=$!
for _ in $(seq 50); do ip netns exec "$NS" ip link show mmds0 >/dev/null 2>&1 && break; sleep 0.1; done
ip netns exec "$NS" ip link set lo up
ip netns exec "$NS" ip link set mmds0 up
ip netns exec "$NS" ip addr add 172.16.0.2/24 dev mmds0
ip netns exec "$NS" ip route add 169.254.169.254/32 dev mmds0
run() { echo "+ $*" >&2; ip netns exec "$NS" "$@"; echo; }
if [[ $VERSION == V2 ]]; then
	TOKEN=$(ip netns exec "$NS" curl -sS -X PUT -H 'X-metadata-token-ttl-seconds: 60' http://169.254.169.254/latest/api/token)
	run curl -sS -o /dev/null -w '%{http_code} without token\n' http://169.254.169.254/latest/meta-data/
	run curl -sS -H "X-metadata-token: $TOKEN" http://169.254.169.254/latest/meta-data/
	run curl -sS -H "X-metadata-token: $TOKEN" -H 'Accept: application/json' http://169.254.169.254/latest/meta-data/network
else
	run busybox wget -q -O - http://169.254.169.254/latest/meta-data/
	run busybox wget -q -O - http://169.254.169.254/latest/meta-data/ami-id
	run sh -c 'busybox wget -q -O - http://169.254.169.254/latest/meta-data/big | wc -c'
	run curl -sS -H 'Accept: application/json' http://169.254.169.254/latest/meta-data/network
	run curl -sS http://169.254.169.254/latest/meta-data/ami-id http://169.254.169.254/latest/meta-data/hostname
fi
