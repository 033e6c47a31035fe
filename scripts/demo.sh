#!/usr/bin/env bash
# The product in one command: builds the agent, makes three releases of a
# sample Node app (v1, v2, and a broken v3 that never listens) as tar.gz
# archives served over HTTP on 127.0.0.1 with sha256 checksums, runs the
# agent, then under continuous load deploys v1, v2, the broken v3 (refused and
# rolled back by the agent itself) and rolls back to v1 on demand. It prints
# each step's time and the request counts: failed must be 0.
# Everything stays on 127.0.0.1 and in a temp dir that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

bash scripts/install-deps.sh >/dev/null

. scripts/lib/workdir.sh
workdir demo
now_ms() { date +%s%3N; }

echo "== building agent and loadgen"
CGO_ENABLED=0 go build -o "$work/bin/agent" ./agent
go build -o "$work/bin/loadgen" ./cmd/loadgen
agent="$work/bin/agent"

echo "== packing releases v1, v2 and a broken v3"
mkdir -p "$work/artifacts"
for v in v1 v2 v3; do
	mkdir -p "$work/src/$v"
	cp examples/node/server.js examples/node/package.json "$work/src/$v/"
done
# v3 starts but never listens on its socket: the agent must refuse it.
cat > "$work/src/v3/server.js" <<'JS'
console.log('v3 booting, but it forgot to listen');
setInterval(() => {}, 1000);
JS
for v in v1 v2 v3; do
	tar -C "$work/src/$v" -czf "$work/artifacts/$v.tar.gz" .
done

http_port=$(free_port)
python3 -m http.server --bind 127.0.0.1 --directory "$work/artifacts" "$http_port" >/dev/null 2>&1 &
pids+=($!)
url() { echo "http://127.0.0.1:$http_port/$1.tar.gz?checksum=sha256:$(sha256sum "$work/artifacts/$1.tar.gz" | cut -d' ' -f1)"; }

app_port=$(free_port)
cat > "$work/deploy.toml" <<TOML
root = "$work/root"
keep_releases = 3

[app]
command = ["node", "server.js"]
workers = 2
drain_timeout = "10s"

[[listen]]
name = "http"
address = "127.0.0.1:$app_port"

[readiness]
mode = "listen"
timeout = "5s"
TOML
export AGENT_CONFIG="$work/deploy.toml"

echo "== starting the agent (root $work/root, app on 127.0.0.1:$app_port)"
"$agent" run >"$work/agent.log" 2>&1 &
agent_pid=$!
pids+=($agent_pid)
for _ in $(seq 100); do
	"$agent" status >/dev/null 2>&1 && break
	sleep 0.1
done
"$agent" status >/dev/null

step() { # step NAME EXPECTED_EXIT CMD...
	local name=$1 want=$2; shift 2
	local t0 rc=0
	t0=$(now_ms)
	"$@" >"$work/step.out" 2>&1 || rc=$?
	printf '%-34s exit %d in %5d ms\n' "$name" "$rc" "$(( $(now_ms) - t0 ))"
	sed 's/^/    | /' "$work/step.out" | tail -n 8
	if [ "$rc" -ne "$want" ]; then
		echo "demo: $name exited $rc, want $want; agent log:"; tail -n 30 "$work/agent.log"; exit 1
	fi
}

step "deploy v1 (first release)" 0 "$agent" deploy --id v1 "$(url v1)"
curl -fsS "http://127.0.0.1:$app_port/"

echo "== continuous load: 16 keep-alive connections"
"$work/bin/loadgen" -addr "127.0.0.1:$app_port" -conns 16 -keepalive -duration 120s -json >"$work/load.json" &
load_pid=$!
pids+=($load_pid)
sleep 1 # let the load reach steady state before the first deploy

step "deploy v2 under load" 0 "$agent" deploy --id v2 "$(url v2)"
step "deploy broken v3 under load" 1 "$agent" deploy --id v3 "$(url v3)"
step "rollback to v1 under load" 0 "$agent" rollback --to v1
sleep 1
kill -INT "$load_pid"
wait "$load_pid" || true

echo "== status"
"$agent" status
echo "== load during the three operations"
python3 - "$work/load.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"requests {r['requests']}  ok {r['ok']}  failed {r['failed_total']} {r['failed']}  "
      f"stale keep-alive {r['stale_keepalive']}")
print(f"req/s {r['rps']:.0f}  p50 {r['p50_ns']/1e6:.2f} ms  p99 {r['p99_ns']/1e6:.2f} ms  max {r['max_ns']/1e6:.2f} ms")
print("served by:", ", ".join(f"{k}: {v}" for k, v in sorted(r['bodies'].items())))
sys.exit(1 if r['failed_total'] else 0)
PY
echo "== demo done: 0 failed requests"
