#!/usr/bin/env bash
# What connection rescue saves and what it costs, side by side in one run:
# the third-party stacks of examples/compat at their own default stop, each
# under `agent run` (2 workers) with rescue on and then off, in the same
# conditions:
#
#   per stack:  ROUNDS deploys under a keep-alive load (16 connections) and a
#               new-connection load (4 connections) at once: requests failed
#               and stale keep-alive errors (a client that never retries sees
#               both), and the agent's CPU time over the deploys (ticks of
#               utime+stime from /proc: what polling and forwarding cost);
#   steady:     the Node http stack with no deploy, keep-alive and
#               new-connection throughput for SECS seconds, rescue on / off
#               (rescue does nothing in steady state: the ratio should be 1);
#   nodelay:    FastAPI on uvicorn --fd 3, keep-alive requests a second with
#               [[listen]] nodelay on / off.
#
# A measurement: no threshold, nothing fails on a slow machine.
#
#   scripts/bench-rescue.sh                     # every stack, 3 deploys each
#   STACKS="nodehttp go" ROUNDS=5 scripts/bench-rescue.sh
#
# Everything runs on 127.0.0.1 in a temp dir removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
SECS=${SECS:-8}
STACKS=${STACKS:-"express nodehttp nodebare fastapi django sinatra go"}
bash scripts/install-examples-deps.sh >/dev/null

. scripts/lib/workdir.sh
workdir bench-rescue
json() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, d))' "$@"; }
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }

CGO_ENABLED=0 go build -o "$work/agent" ./agent
go build -o "$work/loadgen" ./cmd/loadgen

# stack NAME -> command, readiness mode, release archive
declare -A cmd mode
cmd[express]='"node", "server.js"'
mode[express]=listen
cmd[nodehttp]='"node", "server.js"'
mode[nodehttp]=listen
cmd[nodebare]='"node", "server.js"'
mode[nodebare]=listen
cmd[fastapi]='"/usr/bin/python3", "-m", "uvicorn", "--fd", "3", "main:app"'
mode[fastapi]=listen
cmd[django]='"gunicorn", "--preload", "compatsite.wsgi"'
mode[django]=notify
cmd[sinatra]='"puma", "-C", "puma.rb"'
mode[sinatra]=notify
cmd[go]='"./app"'
mode[go]=listen

archive() { # NAME -> path of a tar.gz of the stack's release
	local name=$1 src="$work/src-$1"
	[ -f "$work/$name.tar.gz" ] && { echo "$work/$name.tar.gz"; return; }
	mkdir -p "$src"
	if [ "$name" = go ]; then
		CGO_ENABLED=0 go build -o "$src/app" ./examples/compat/go
	else
		cp -r "examples/compat/$name/." "$src/"
	fi
	tar -C "$src" -czf "$work/$name.tar.gz" .
	echo "$work/$name.tar.gz"
}

start_agent() { # DIR NAME RESCUE NODELAY -> sets agent_pid, port
	local dir=$1 name=$2 rescue=$3 nodelay=$4
	port=$(free_port)
	mkdir -p "$dir"
	cat >"$dir/deploy.toml" <<TOML
root = "$dir/root"
keep_releases = 2
[app]
command = [${cmd[$name]}]
workers = 2
drain_timeout = "15s"
[[listen]]
name = "http"
address = "127.0.0.1:$port"
rescue = $rescue
nodelay = $nodelay
[readiness]
mode = "${mode[$name]}"
timeout = "60s"
TOML
	"$work/agent" run -c "$dir/deploy.toml" >"$dir/agent.log" 2>&1 &
	agent_pid=$!
	pids+=("$agent_pid")
	for _ in $(seq 100); do "$work/agent" status -c "$dir/deploy.toml" >/dev/null 2>&1 && break; sleep 0.1; done
	"$work/agent" deploy -c "$dir/deploy.toml" --id r0 "file://$(archive "$name")" >/dev/null
}

stop_agent() {
	kill -TERM "$agent_pid"
	wait "$agent_pid" || true
}

deploys() { # NAME RESCUE -> one table row
	local name=$1 rescue=$2 dir="$work/$1-$2" conns=16 t0 t1
	[ "$name" = sinatra ] && conns=4 # puma's 5 threads, one per busy keep-alive client
	start_agent "$dir" "$name" "$rescue" true
	"$work/loadgen" -addr "127.0.0.1:$port" -conns "$conns" -keepalive -duration 10m -json >"$dir/ka.json" 2>&1 &
	local ka=$!
	"$work/loadgen" -addr "127.0.0.1:$port" -conns 4 -duration 10m -json >"$dir/nc.json" 2>&1 &
	local nc=$!
	sleep 1
	t0=$(ticks "$agent_pid")
	for i in $(seq 1 "$ROUNDS"); do
		"$work/agent" deploy -c "$dir/deploy.toml" --id "r$i" "file://$(archive "$name")" >/dev/null
	done
	t1=$(ticks "$agent_pid")
	kill -INT "$ka" "$nc"
	wait "$ka" "$nc" || true
	stop_agent
	printf '| %-9s | %-3s | %6s | %6s | %6s | %6s | %5s | %s |\n' "$name" "$rescue" \
		"$(json "$dir/ka.json" requests)" "$(json "$dir/ka.json" 'failed_total+stale_keepalive')" \
		"$(json "$dir/nc.json" requests)" "$(json "$dir/nc.json" failed_total)" "$((t1 - t0))" \
		"$( (grep -o 'msg="Connections rescued".*' "$dir/agent.log" || true) | awk '{for(i=1;i<=NF;i++) if ($i ~ /^(held|forwarded|replayed|idle|abandoned)=/) {split($i,a,"="); s[a[1]]+=a[2]}} END {printf "held %d, forwarded %d, replayed %d, idle %d, abandoned %d", s["held"], s["forwarded"], s["replayed"], s["idle"], s["abandoned"]}')"
}

steady() { # RESCUE KEEPALIVE -> requests a second (runs in a subshell: a fresh dir each time)
	local dir ka=""
	dir=$(mktemp -d "$work/steady-$1-$2.XXXXXX")
	[ "$2" = true ] && ka=-keepalive
	start_agent "$dir" nodehttp "$1" true
	"$work/loadgen" -addr "127.0.0.1:$port" -conns 8 $ka -duration "${SECS}s" -json >"$dir/load.json" 2>&1
	stop_agent
	json "$dir/load.json" 'int(ok/(elapsed_ns/1e9))'
}

echo "== $ROUNDS deploys per stack and setting; keep-alive load (16 connections; sinatra 4) and new-connection load (4) at once"
echo
echo "| stack | rescue | keep-alive requests | failed + stale | new-conn requests | failed | agent CPU ticks | rescue |"
echo "|---|---|---|---|---|---|---|---|"
for s in $STACKS; do
	deploys "$s" true
	deploys "$s" false
done

echo
echo "== steady state, Node http, 8 connections, ${SECS}s each (requests a second; rescue on / off, twice, alternating)"
for ka in true false; do
	a1=$(steady true $ka); b1=$(steady false $ka); a2=$(steady true $ka); b2=$(steady false $ka)
	printf 'keep-alive=%-5s  on %s %s  off %s %s  ratio on/off %s\n' "$ka" "$a1" "$a2" "$b1" "$b2" \
		"$(awk -v a=$((a1 + a2)) -v b=$((b1 + b2)) 'BEGIN {printf "%.3f", a/b}')"
done

echo
echo "== nodelay: FastAPI on uvicorn --fd 3, keep-alive, 8 connections, ${SECS}s (requests a second)"
for nd in true false; do
	dir="$work/nodelay-$nd"
	start_agent "$dir" fastapi true "$nd"
	"$work/loadgen" -addr "127.0.0.1:$port" -conns 8 -keepalive -duration "${SECS}s" -json >"$dir/load.json" 2>&1
	stop_agent
	printf 'nodelay=%-5s  %s req/s, p50 %s ms\n' "$nd" "$(json "$dir/load.json" 'int(ok/(elapsed_ns/1e9))')" "$(json "$dir/load.json" 'round(p50_ns/1e6, 2)')"
done
