#!/bin/bash
# What the metrics endpoint costs the agent: the binary's size, and the
# VmRSS of the agent and of its watchdog (as the agent's performance figures
# measure RSS) with one idle python3 worker after DEPLOYS deploys (default
# 1), [metrics] off and on, on after SCRAPES GETs of /metrics on one
# keep-alive connection (default 300), RUNS times each (default 3). For each
# agent binary given, or this tree built static (CGO_ENABLED=0).
# MODES=off measures an agent from before [metrics] existed.
#   scripts/bench-metrics.sh [AGENT_BINARY...]
set -euo pipefail
SCRAPES=${SCRAPES:-300}
RUNS=${RUNS:-3}
DEPLOYS=${DEPLOYS:-1}
cd "$(dirname "$0")/.."
. scripts/lib/workdir.sh
workdir bench-metrics
bins=("$@")
if [ ${#bins[@]} -eq 0 ]; then
	CGO_ENABLED=0 go build -o "$work/agent" ./agent
	bins=("$work/agent")
fi
idle_app "$work/rel"
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
one() { # BINARY on|off RUN
	local bin=$1 d p addr wd=0 c
	d=$(mktemp -d "$work/$2-$3-XXXX")
	idle_agent "$bin" "$d" "" "$([ "$2" = on ] && printf '[metrics]\naddress = "127.0.0.1:0"')"
	p=$agent_pid
	for i in $(seq "$DEPLOYS"); do "$bin" deploy -c "$d/deploy.toml" --id "v$i" "$work/rel" >/dev/null; done
	if [ "$2" = on ]; then
		addr=$("$bin" status -c "$d/deploy.toml" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["metrics"])')
		# One keep-alive connection, as Prometheus scrapes.
		python3 - "$addr" "$SCRAPES" <<'PY'
import http.client, sys
c = http.client.HTTPConnection(sys.argv[1], timeout=10)
for _ in range(int(sys.argv[2])):
    c.request("GET", "/metrics")
    r = c.getresponse()
    r.read()
    assert r.status == 200, r.status
PY
	fi
	sleep 2
	for c in $(pgrep -P "$p"); do # the watchdog: the agent binary re-executed
		[ "$(readlink "/proc/$c/exe")" = "$(readlink "/proc/$p/exe")" ] && wd=$(rss "$c")
	done
	echo "$(rss "$p") $wd"
	kill "$p"
	wait "$p" || true
}
for bin in "${bins[@]}"; do
	for m in ${MODES:-off on}; do
		line="$(basename "$bin") $(stat -c %s "$bin") bytes, metrics $m: agent+watchdog KiB"
		for r in $(seq "$RUNS"); do
			read -r a w <<<"$(one "$bin" "$m" "$r")"
			line+=" $((a + w)) ($a+$w)"
		done
		echo "$line"
	done
done
