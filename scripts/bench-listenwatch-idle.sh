#!/bin/bash
# The idle CPU cost of the listen watch: the agent with one idle python3
# worker, its utime+stime over SECONDS (default 120) from /proc/PID/stat,
# with [app] listen_check = 0s (off), 50ms (default) and 100ms, side by side.
set -euo pipefail
SECS=${1:-120}
cd "$(dirname "$0")/.."
. scripts/lib/workdir.sh
workdir bench-listenwatch
CGO_ENABLED=0 go build -o "$work/agent" ./agent
idle_app "$work/rel"
one() { # CHECK
	local d="$work/$1" p t0 t1
	idle_agent "$work/agent" "$d" "listen_check = \"$1\""
	p=$agent_pid
	"$work/agent" deploy -c "$d/deploy.toml" --id v1 "$work/rel" >/dev/null
	sleep 2
	t0=$(awk '{print $14+$15}' /proc/$p/stat)
	sleep "$SECS"
	t1=$(awk '{print $14+$15}' /proc/$p/stat)
	kill "$p"
	wait "$p" || true
	echo "listen_check=$1: $((t1 - t0)) ticks of $(getconf CLK_TCK)/s in ${SECS}s"
}
one 0s & one 50ms & one 100ms
wait
