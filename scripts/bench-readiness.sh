#!/usr/bin/env bash
# What the HTTP readiness check and probation cost a deploy: the sample Node
# app (examples/node/server.js) under `agent run`, WORKERS workers (default 2),
# keep-alive load from loadgen, ROUNDS deploys (default 8) per readiness
# setting:
#   listen                  mode listen
#   listen+http             mode listen, http_path = "/up"
#   listen+probation=1s     mode listen, probation = "1s"
#   listen+probation=2s     mode listen, probation = "2s"
# It prints, per setting, the median time from the start of the reload to
# the quorum ready (`ready_after` in the agent's log: what the check adds;
# probation comes after it), the median wall time of `agent deploy` (which includes the old
# generation's drain), each with its ratio to plain listen, the probes the
# HTTP check sent per new worker, and the load's failed requests (must be
# 0). A measurement: no threshold, nothing fails on a slow machine.
#
#   scripts/bench-readiness.sh
#   WORKERS=4 ROUNDS=5 scripts/bench-readiness.sh
#
# Everything runs on 127.0.0.1 in a temp dir removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

WORKERS=${WORKERS:-2}
ROUNDS=${ROUNDS:-8}
command -v node >/dev/null || bash scripts/install-deps.sh >/dev/null

. scripts/lib/workdir.sh
workdir bench-readiness
now_ms() { date +%s%3N; }

CGO_ENABLED=0 go build -o "$work/agent" ./agent
go build -o "$work/loadgen" ./cmd/loadgen
mkdir -p "$work/src"
cp examples/node/server.js examples/node/package.json "$work/src/"
tar -C "$work/src" -czf "$work/app.tar.gz" .
url="file://$work/app.tar.gz"

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2))}'; }

declare -A med rdy
run_setting() { # NAME EXTRA-READINESS-TOML
	local name=$1 extra=$2 dir="$work/$1" port
	port=$(free_port)
	mkdir -p "$dir"
	cat >"$dir/deploy.toml" <<TOML
root = "$dir/root"
keep_releases = 2
[app]
command = ["node", "server.js"]
workers = $WORKERS
drain_timeout = "10s"
[[listen]]
name = "http"
address = "127.0.0.1:$port"
[readiness]
mode = "listen"
timeout = "30s"
$extra
TOML
	"$work/agent" run -c "$dir/deploy.toml" >"$dir/agent.log" 2>&1 &
	local agent_pid=$!
	pids+=("$agent_pid")
	for _ in $(seq 100); do "$work/agent" status -c "$dir/deploy.toml" >/dev/null 2>&1 && break; sleep 0.1; done
	"$work/agent" deploy -c "$dir/deploy.toml" --id r0 "$url" >/dev/null
	"$work/loadgen" -addr "127.0.0.1:$port" -conns 4 -keepalive -duration 10m -json >"$dir/load.json" 2>&1 &
	local load_pid=$!
	sleep 0.5
	: >"$dir/times"
	for i in $(seq 1 "$ROUNDS"); do
		local t0
		t0=$(now_ms)
		"$work/agent" deploy -c "$dir/deploy.toml" --id "r$i" "$url" >/dev/null
		echo $(($(now_ms) - t0)) >>"$dir/times"
	done
	kill -INT "$load_pid"
	wait "$load_pid" || true
	kill -TERM "$agent_pid"
	wait "$agent_pid" || true
	# ready_after=1.234s / 456.7ms, skipping r0's (the first generation).
	grep -o 'msg="Generation serving".*ready_after=[0-9.]*[mµ]*s' "$dir/agent.log" | sed 's/.*ready_after=//' | tail -n +2 |
		awk '/ms$/ {print int($1); next} /µs$/ {print 0; next} {print int($1 * 1000)}' >"$dir/ready" || true
	local m r failed probes
	m=$(median <"$dir/times")
	r=$(median <"$dir/ready")
	med[$name]=$m
	rdy[$name]=$r
	failed=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["failed_total"])' "$dir/load.json" 2>/dev/null || echo "?")
	probes=$( (grep -o 'probes=[0-9]*' "$dir/agent.log" || true) | cut -d= -f2 | sort -n | tr '\n' ' ')
	printf '%-22s quorum after %5d ms (x%s)  deploy %5d ms (x%s)  failed %s%s\n' "$name" \
		"$r" "$(awk -v a="$r" -v b="${rdy[listen]:-$r}" 'BEGIN {printf "%.2f", a/b}')" \
		"$m" "$(awk -v a="$m" -v b="${med[listen]:-$m}" 'BEGIN {printf "%.2f", a/b}')" "$failed" \
		"${probes:+  probes per new worker: $probes}"
}

echo "== $WORKERS workers, $ROUNDS deploys per setting, keep-alive load (4 connections)"
run_setting listen ""
run_setting listen+http 'http_path = "/up"'
run_setting listen+probation=1s 'probation = "1s"'
run_setting listen+probation=2s 'probation = "2s"'
