#!/usr/bin/env bash
# The zero-downtime benchmark, side by side, in one command: the same sample
# Node app (bench/fixtures/app.js, 2 workers) alone, under handoff (`agent
# run` + `agent deploy` every 3 s), under a seed-style cluster master
# (bench/fixtures/cluster-master.js, SIGHUP) and under pm2 cluster mode
# (`pm2 reload`), each with keep-alive and new-connection load, plus handoff
# under a failed deploy, a rollback and an agent restart behind
# systemd-socket-activate. Results: bench/results/<date>.json and
# bench/results/latest.md.
#
#   scripts/bench.sh            # about 7 minutes, bounded at 10
#   scripts/bench.sh --quick    # under 2 minutes, 2 reloads per row
#
# The full run then runs scripts/bench-rescue.sh (about 8 more minutes; set
# HANDOFF_BENCH_NO_RESCUE=1 to leave it out): a row per third-party stack at
# its own stop, connection rescue on vs off.
#
# The bound covers building and installing too: cmd/bench gets what is left
# as its -budget and skips (and lists) rows that would start after it.
#
# Everything runs on 127.0.0.1, in a temp dir removed at the end (kept, and
# its path printed, when the run fails). pm2 is installed from the npm
# registry into that temp dir at a pinned version; PM2_HOME is private to it.
# Other flags go to cmd/bench (see `go run ./cmd/bench -h`).
set -euo pipefail
cd "$(dirname "$0")/.."

PM2_VERSION=7.0.4

began=$(date +%s)
limit=570 # seconds for the whole script, building and installing included
args=()
budget_given=0
for a in "$@"; do
	case "$a" in
	--quick) args+=(-quick) limit=112 ;;
	-budget | -budget=* | --budget | --budget=*) args+=("$a") budget_given=1 ;;
	*) args+=("$a") ;;
	esac
done

for tool in node npm systemd-socket-activate; do
	if ! command -v "$tool" >/dev/null; then
		bash scripts/install-deps.sh
		break
	fi
done

tmp=$(mktemp -d /tmp/handoff-bench.XXXXXX)
ok=0
pm2="$tmp/pm2/node_modules/.bin/pm2"
# cmd/bench stops and reaps everything it started, on errors and on Ctrl-C
# too. This is the net under it, for a bench that was itself killed: every
# process group it started (logs/children.pids: "pid starttime", checked so
# that a reused pid is never hit) and pm2's daemon.
reap() {
	local pids="$tmp/work/logs/children.pids" pid start stat rest
	if [ -d "$tmp/work/pm2-home" ] && [ -x "$pm2" ] && [ -s "$tmp/work/pm2-home/pm2.pid" ] &&
		kill -0 "$(cat "$tmp/work/pm2-home/pm2.pid")" 2>/dev/null; then
		PM2_HOME="$tmp/work/pm2-home" PM2_DISABLE_VERSION_CHECK=1 timeout 20 "$pm2" kill >/dev/null 2>&1 || true
	fi
	[ -f "$pids" ] || return 0
	while read -r pid start; do
		stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
		rest=${stat##*) }
		# shellcheck disable=SC2086
		set -- $rest
		[ "${20}" = "$start" ] || continue
		kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
	done <"$pids"
}
cleanup() {
	reap
	if [ "$ok" = 1 ] || [ -z "$(ls -A "$tmp/work/logs" 2>/dev/null)" ]; then
		rm -rf "$tmp"
	else
		echo "bench did not finish; logs kept in $tmp/work/logs" >&2
	fi
}
trap cleanup EXIT

echo "== building agent and cmd/bench"
CGO_ENABLED=0 go build -o "$tmp/bin/agent" ./agent  # as README "Install" builds it
go build -o "$tmp/bin/bench" ./cmd/bench

echo "== installing pm2@$PM2_VERSION into $tmp/pm2"
npm install --prefix "$tmp/pm2" --prefer-offline --no-audit --no-fund --no-save --loglevel=error "pm2@$PM2_VERSION" >/dev/null

echo "== running the benchmark"
mkdir -p "$tmp/work"
if [ "$budget_given" = 0 ]; then
	# What is left of the bound once building and installing took their share.
	args+=(-budget "$((limit - ($(date +%s) - began)))s")
fi
"$tmp/bin/bench" \
	-agent "$tmp/bin/agent" \
	-pm2 "$pm2" \
	-fixtures bench/fixtures \
	-out bench/results \
	-work "$tmp/work" \
	"${args[@]}"
ok=1
echo "== results in bench/results/latest.md"

# Connection rescue on the third-party stacks at their own stop, rescue on
# vs off side by side (scripts/bench-rescue.sh says what each row means).
# Not with --quick, whose bound it would break.
if [ "$limit" -gt 200 ] && [ -z "${HANDOFF_BENCH_NO_RESCUE:-}" ]; then
	echo "== connection rescue (scripts/bench-rescue.sh)"
	bash scripts/bench-rescue.sh
fi
