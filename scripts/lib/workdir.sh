# Sourced by the scripts here that run processes on 127.0.0.1 in a temp dir
# of their own (demo, benches): nothing is left behind, whatever ends them.
#
#   workdir NAME   makes $work (/tmp/handoff-NAME.XXXXXX); on exit or
#                  interrupt every pid added to pids[] gets SIGTERM and is
#                  waited for, then $work is removed
#   free_port      prints a TCP port free on 127.0.0.1 now
#   idle_app DIR   writes DIR/app.py: a worker that sends READY=1 and sleeps
#                  until SIGTERM (the agent's own cost, with no app work)

pids=()

workdir() {
	work=$(mktemp -d "/tmp/handoff-$1.XXXXXX")
	trap workdir_cleanup EXIT INT TERM
}

workdir_cleanup() {
	for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
	rm -rf "$work"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

idle_app() {
	mkdir -p "$1"
	cat > "$1/app.py" <<'APP'
import os, signal, socket, time
socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
while True:
    time.sleep(3600)
APP
}

# idle_agent BIN DIR [APP_LINES] [TOML] writes DIR/deploy.toml for one idle
# worker (idle_app in $work/rel, readiness notify) with APP_LINES added to
# [app] and TOML at the end, starts `BIN run` on it (its log in DIR/log),
# waits until it answers, and sets agent_pid. The caller stops it.
idle_agent() {
	local bin=$1 d=$2
	mkdir -p "$d"
	cat > "$d/deploy.toml" <<TOML
root = "$d/root"
[app]
command = ["python3", "app.py"]
workers = 1
${3:-}
[[listen]]
name = "http"
address = "127.0.0.1:0"
[readiness]
mode = "notify"
${4:-}
TOML
	"$bin" run -c "$d/deploy.toml" 2>"$d/log" &
	agent_pid=$!
	for _ in $(seq 100); do "$bin" status -c "$d/deploy.toml" >/dev/null 2>&1 && break; sleep 0.1; done
}
