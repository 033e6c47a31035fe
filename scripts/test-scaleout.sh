#!/usr/bin/env bash
# Rolling deploys over several servers with ansible/deploy.yml and
# ansible/upgrade-agent.yml, on three real hosts behind a real haproxy, all
# made here and removed at the end:
#
# - three network namespaces on a bridge, with addresses in 10.213.N.0/24
#   (N from this script's pid) that exist only inside them and on the bridge;
# - in each, one sshd (key auth, its own host key and config) and one agent
#   (its own root, config, control socket and binary path);
# - haproxy on 127.0.0.1 in front of the three, with HTTP health checks
#   (`option httpchk`: a TCP check would pass with no workers at all, the
#   agent holds the socket) every 100 ms, one failed check = DOWN, and
#   `retries 0`, so that haproxy hides no refused or reset connection;
# - load from 127.0.0.1 only, through haproxy, with cmd/loadgen (keep-alive,
#   bounded in time and count); stale keep-alive counts as failed.
#
# Cases, each under continuous load: a rolling deploy with haproxy draining;
# the same with agent_serial [1, "50%"] and no draining; a release that
# fails on host 2 (rollout stops, host 1 rolled back, host 3 untouched),
# then an agent that cannot be reached; an upgrade of the agent binary on
# every host (same worker pids, new version). Each must end with 0 failed
# requests and no failed health check.
#
# SCALEOUT_MEASURE=1 adds figures (no pass/fail): an agent restart under
# load (no socket unit), as it is and drained through haproxy first.
# Skips with one line "== scaleout: SKIP: …" and exit 0 only where
# `ip netns add` is not permitted. SCALEOUT_KEEP=1 keeps the temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
began=$(date +%s%3N)

tag=hs$$
probe_ns=${tag}-probe
if ! ip netns add "$probe_ns" 2>/dev/null; then
	echo "== scaleout: SKIP: \`ip netns add\` is not permitted here (needs root with CAP_SYS_ADMIN)"
	exit 0
fi
ip netns del "$probe_ns"

bash scripts/install-deps.sh >/dev/null

T=$(mktemp -d /tmp/handoff-scaleout.XXXXXX)
# A /24 no other interface or route uses (another run of this script may
# hold one), starting from one chosen by the pid.
for k in $(seq 0 249); do
	net=10.213.$((($$ + k) % 250 + 1))
	[ -z "$(ip -4 route show to "$net.0/24")" ] && break
done
bridge=${tag}br
hosts=(h1 h2 h3)
declare -A agent_pid
pids=()   # everything started here, stopped in reverse order at exit
nss=()
failed=0

cleanup() {
	local rc=$?
	local i sock pid
	# Ansible's ssh connection masters (ControlPersist) first: their sshd
	# sessions outlive sshd itself while they stay connected.
	for sock in "$T"/cp-*; do
		[ -S "$sock" ] || continue
		pid=$(ssh -O check -o ControlPath="$sock" x 2>&1 | sed -n 's/.*pid=\([0-9]*\).*/\1/p')
		[ -n "$pid" ] || continue
		kill -TERM "$pid" 2>/dev/null || true
		for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
	done
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null || true; done
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do wait "${pids[i]}" 2>/dev/null || true; done
	for ns in "${nss[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
	ip link del "$bridge" 2>/dev/null || true
	if [ "$rc" -ne 0 ] || [ "${SCALEOUT_KEEP:-}" = 1 ]; then
		echo "== scaleout: logs kept in $T"
	else
		rm -rf "$T"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() { echo "FAIL: $*"; failed=$((failed + 1)); }
ms_since() { echo $(($(date +%s%3N) - $1)); }

# --- binaries and releases -------------------------------------------------
echo "== building agents (versions scaleout-1, scaleout-2), the example app and loadgen"
t0=$(date +%s%3N)
mkdir -p "$T/bin" "$T/artifacts"
CGO_ENABLED=0 go build -ldflags "-X main.version=scaleout-1" -o "$T/bin/agent-1" ./agent
CGO_ENABLED=0 go build -ldflags "-X main.version=scaleout-2" -o "$T/bin/agent-2" ./agent
CGO_ENABLED=0 go build -o "$T/bin/app" ./examples/go
go build -o "$T/bin/loadgen" ./cmd/loadgen
echo "   $(ms_since "$t0") ms"

# Every release is the Go example behind a start script that refuses to
# start where the host's root holds the marker fail-<release id>: the same
# artifact fails on one host only.
for r in r1 r2 r3 r4; do
	mkdir -p "$T/src/$r"
	cp "$T/bin/app" "$T/src/$r/server"
	cp scripts/scaleout/start.sh "$T/src/$r/start.sh"
	echo "$r" >"$T/src/$r/RELEASE"
	tar -C "$T/src/$r" -czf "$T/artifacts/$r.tar.gz" .
done

# --- network: a bridge and three namespaces ---------------------------------
echo "== network: bridge $bridge $net.1/24, namespaces ${tag}-h1..h3 ($net.11-13)"
ip link add "$bridge" type bridge
ip addr add "$net.1/24" dev "$bridge"
ip link set "$bridge" up
for i in 1 2 3; do
	ns=${tag}-h$i
	ip netns add "$ns"
	nss+=("$ns")
	ip link add "${tag}v$i" type veth peer name eth0 netns "$ns"
	ip link set "${tag}v$i" master "$bridge" up
	ip -n "$ns" addr add "$net.1$i/24" dev eth0
	ip -n "$ns" link set eth0 up
	ip -n "$ns" link set lo up
done

# Artifacts are fetched over HTTP from the bridge address, with checksums.
art_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m http.server --bind "$net.1" --directory "$T/artifacts" "$art_port" >"$T/artifacts.log" 2>&1 &
pids+=($!)
url() { echo "http://$net.1:$art_port/$1.tar.gz?checksum=sha256:$(sha256sum "$T/artifacts/$1.tar.gz" | cut -d' ' -f1)"; }

# --- sshd and agent per host ------------------------------------------------
echo "== sshd and agent in each namespace"
mkdir -p "$T/ssh" /run/sshd
ssh-keygen -q -t ed25519 -N '' -f "$T/ssh/id" -C scaleout
cp "$T/ssh/id.pub" "$T/ssh/authorized_keys"
: >"$T/ssh/known_hosts"
for i in 1 2 3; do
	h=h$i d=$T/h$i
	mkdir -p "$d/bin"
	cp "$T/bin/agent-1" "$d/bin/agent"
	ssh-keygen -q -t ed25519 -N '' -f "$d/ssh_host_key" -C "$h"
	echo "$net.1$i $(cut -d' ' -f1,2 "$d/ssh_host_key.pub")" >>"$T/ssh/known_hosts"
	cat >"$d/sshd_config" <<EOF
ListenAddress $net.1$i:22
HostKey $d/ssh_host_key
PidFile none
AuthorizedKeysFile $T/ssh/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
EOF
	/usr/sbin/sshd -t -f "$d/sshd_config"
	ip netns exec "${tag}-$h" /usr/sbin/sshd -D -e -f "$d/sshd_config" >"$d/sshd.log" 2>&1 &
	pids+=($!)

	cat >"$d/deploy.toml" <<EOF
root = "$d/root"
keep_releases = 3

[app]
command = ["/bin/sh", "start.sh"]
workers = 2
drain_timeout = "10s"

[[listen]]
name = "http"
address = "$net.1$i:8080"

[readiness]
mode = "listen"
timeout = "20s"
EOF
	ip netns exec "${tag}-$h" "$d/bin/agent" run -c "$d/deploy.toml" >"$d/agent.log" 2>&1 &
	agent_pid[$h]=$!
	pids+=($!)
done

# --- haproxy in front, on 127.0.0.1 ----------------------------------------
lb_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$T/haproxy.cfg" <<EOF
global
	log stdout format raw local0 info
	stats socket $T/haproxy.sock mode 600 level admin

defaults
	mode http
	log global
	option httplog
	option dontlog-normal
	option log-health-checks
	retries 0
	timeout connect 2s
	timeout client 30s
	timeout server 30s
	timeout check 2s

frontend web
	bind 127.0.0.1:$lb_port
	default_backend app

backend app
	option httpchk GET /
	http-check expect status 200
	default-server check inter 100ms fall 1 rise 1
	server h1 $net.11:8080
	server h2 $net.12:8080
	server h3 $net.13:8080
EOF
haproxy -c -q -f "$T/haproxy.cfg"
haproxy -db -f "$T/haproxy.cfg" >"$T/haproxy.log" 2>&1 &
pids+=($!)

# --- Ansible ----------------------------------------------------------------
cat >"$T/inventory.ini" <<EOF
[app]
h1 ansible_host=$net.11 agent_config=$T/h1/deploy.toml agent_bin=$T/h1/bin/agent
h2 ansible_host=$net.12 agent_config=$T/h2/deploy.toml agent_bin=$T/h2/bin/agent
h3 ansible_host=$net.13 agent_config=$T/h3/deploy.toml agent_bin=$T/h3/bin/agent

[app:vars]
ansible_user=root
ansible_ssh_private_key_file=$T/ssh/id
EOF
cat >"$T/ansible.cfg" <<EOF
[defaults]
inventory = $T/inventory.ini
interpreter_python = /usr/bin/python3
local_tmp = $T/ansible-local
remote_tmp = $T/ansible-remote
forks = 5
nocows = 1
retry_files_enabled = false

[ssh_connection]
ssh_args = -F /dev/null -o UserKnownHostsFile=$T/ssh/known_hosts -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes -o ControlMaster=auto -o ControlPersist=120s -o ControlPath=$T/cp-%C
pipelining = true
EOF
export ANSIBLE_CONFIG=$T/ansible.cfg
# Each line of Ansible's output gets the time of day, for the logs.
playbook() { ansible-playbook "$@" | while IFS= read -r l; do printf '%(%T)T %s\n' -1 "$l"; done; }

agent_status() { "$T/$1/bin/agent" status -c "$T/$1/deploy.toml" --json; }
current_of() { agent_status "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["current"])'; }
hastat() { echo "show stat" | socat - "UNIX-CONNECT:$T/haproxy.sock"; }

# --- wait for the hosts -----------------------------------------------------
for h in "${hosts[@]}"; do
	for _ in $(seq 100); do agent_status "$h" >/dev/null 2>&1 && break; sleep 0.1; done
	agent_status "$h" >/dev/null || { echo "agent on $h did not start:"; cat "$T/$h/agent.log"; exit 1; }
done
echo "== ssh to each host through Ansible"
ansible app -o -m ansible.builtin.command -a hostname >"$T/ping.log" 2>&1 || { cat "$T/ping.log"; exit 1; }

echo "== first deploy of r1 on all three at once"
t0=$(date +%s%3N)
playbook ansible/deploy.yml -e agent_release_id=r1 -e "agent_artifact_url=$(url r1)" -e agent_serial=3 >"$T/deploy-r1.log" 2>&1 ||
	{ cat "$T/deploy-r1.log"; exit 1; }
echo "   $(ms_since "$t0") ms"
for h in "${hosts[@]}"; do [ "$(current_of "$h")" = r1 ] || fail "$h: current is not r1"; done

# --- load and checks ---------------------------------------------------------
# Sum of failed health checks over the three servers: a case must not add one.
chkfail_sum() { hastat | awk -F, '$1 == "app" && $2 ~ /^h[0-9]$/ { s += $22 } END { print s + 0 }'; }
all_up() { [ "$(hastat | awk -F, '$1 == "app" && $2 ~ /^h[0-9]$/ && $18 == "UP"' | wc -l)" = 3 ]; }
for _ in $(seq 100); do all_up && break; sleep 0.1; done
all_up || { echo "haproxy does not see all three hosts UP:"; hastat; exit 1; }

load_pid=
load_start() {
	# Niced: the load is there to catch a failure, not to starve Ansible of
	# the machine's CPU.
	nice -n 10 "$T/bin/loadgen" -addr "127.0.0.1:$lb_port" -conns 2 -keepalive -duration 300s -max 5000000 -json \
		>"$T/load-$1.json" 2>"$T/load-$1.err" &
	load_pid=$!
	pids+=("$load_pid")
	chk_before=$(chkfail_sum)
	fails_at_start=$failed
	case_began=$(date +%s%3N)
	sleep 0.5
}
# load_stop CASE [measure]: stops the load, checks 0 failed (stale
# keep-alive counts as failed), enough requests, and no failed health check
# meanwhile; with measure, only prints the figures.
load_stop() {
	local early= mode=${2:-}
	kill -0 "$load_pid" 2>/dev/null || early=1
	kill -INT "$load_pid" 2>/dev/null || true
	wait "$load_pid" || true
	local keep=() p
	for p in "${pids[@]}"; do [ "$p" = "$load_pid" ] || keep+=("$p"); done
	pids=("${keep[@]}")
	local chk_after line
	chk_after=$(chkfail_sum)
	line=$(python3 - "$T/load-$1.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
bodies = " ".join(f"{k.split()[-1]}:{v}" for k, v in sorted(r.get("bodies", {}).items()))
print(r["requests"], r["failed_total"], r["stale_keepalive"], f"requests={r['requests']} failed={r['failed_total']} "
      f"{r['failed'] or ''} stale={r['stale_keepalive']} rps={r['rps']:.0f} served={bodies} errors={r.get('errors') or ''}")
PY
)
	set -- "$1" $line
	local name=$1 requests=$2 failedn=$3 stale=$4
	shift 4
	echo "   $name: $* checks_failed=$((chk_after - chk_before)) ($(ms_since "$case_began") ms)"
	[ "$mode" != measure ] || return 0
	[ "$failedn" = 0 ] && [ "$stale" = 0 ] || fail "$name: $failedn failed, $stale stale keep-alive requests"
	[ -z "$early" ] || fail "$name: the load ended (its 300 s bound) before the case did"
	[ "$requests" -ge 200 ] || fail "$name: only $requests requests went through"
	[ "$chk_after" = "$chk_before" ] || fail "$name: $((chk_after - chk_before)) failed health checks (flap)"
	all_up || fail "$name: not every host is UP in haproxy at the end"
	if [ "$failed" -gt "$fails_at_start" ]; then bad_cases=$((bad_cases + 1)); else good_cases=$((good_cases + 1)); fi
}
good_cases=0 bad_cases=0
lb_vars=(-e agent_lb=haproxy -e "agent_haproxy_socket=$T/haproxy.sock" -e agent_haproxy_backend=app)

echo "== case 1: rolling deploy of r2, one host at a time, haproxy draining each"
load_start rolling
if playbook ansible/deploy.yml -e agent_release_id=r2 -e "agent_artifact_url=$(url r2)" "${lb_vars[@]}" >"$T/deploy-r2.log" 2>&1; then
	for h in "${hosts[@]}"; do [ "$(current_of "$h")" = r2 ] || fail "rolling: $h is not on r2"; done
else
	fail "rolling: the playbook failed"; tail -30 "$T/deploy-r2.log"
fi
load_stop rolling

echo "== case 2: rolling deploy of r3 with agent_serial [1, \"50%\"], no draining"
load_start canary
if playbook ansible/deploy.yml -e agent_release_id=r3 -e "agent_artifact_url=$(url r3)" -e '{"agent_serial": [1, "50%"]}' >"$T/deploy-r3.log" 2>&1; then
	for h in "${hosts[@]}"; do [ "$(current_of "$h")" = r3 ] || fail "canary: $h is not on r3"; done
else
	fail "canary: the playbook failed"; tail -30 "$T/deploy-r3.log"
fi
load_stop canary

echo "== case 3: r4 fails on h2: the rollout stops, h1 goes back to r3, h3 is untouched; then an unreachable agent"
touch "$T/h2/root/fail-r4"
load_start failure
if playbook ansible/deploy.yml -e agent_release_id=r4 -e "agent_artifact_url=$(url r4)" "${lb_vars[@]}" >"$T/deploy-r4.log" 2>&1; then
	fail "failure: the playbook exited 0"
fi
grep -o 'deploy of r4 failed on h2: [^"]*' "$T/deploy-r4.log" | head -1 | cut -c1-400 | sed 's/^/   /'
grep -q 'deploy of r4 failed on h2: .*refuses to start' "$T/deploy-r4.log" || fail "failure: no message naming h2 and the agent's failure text"
grep -q 'Rolled back: h1 to r3 (ok)' "$T/deploy-r4.log" || fail "failure: h1's rollback is not reported"
for h in "${hosts[@]}"; do [ "$(current_of "$h")" = r3 ] || fail "failure: $h is not on r3"; done
last_op() { "$T/$1/bin/agent" history -c "$T/$1/deploy.toml" --json | python3 -c 'import json,sys; e=json.load(sys.stdin)[-1]; print(e["op"], e["id"], e["result"])'; }
echo "   last operation: h1 $(last_op h1), h2 $(last_op h2), h3 $(last_op h3)"
[ "$(last_op h1)" = "rollback r3 ok" ] || fail "failure: h1's last operation is not a rollback to r3"
[ "$(last_op h3)" = "deploy r3 ok" ] || fail "failure: h3 was touched"
# An agent that cannot be reached (exit 3) fails its host the same way: a
# config whose control socket leads nowhere, for every host.
{ cat "$T/h1/deploy.toml"; printf '\n[control]\nsocket = "%s"\n' "$T/nowhere.sock"; } >"$T/unreachable.toml"
if playbook ansible/deploy.yml -e agent_release_id=r5 -e "agent_artifact_url=$(url r3)" -e "agent_config=$T/unreachable.toml" >"$T/deploy-r5.log" 2>&1; then
	fail "unreachable: the playbook exited 0"
fi
grep -o 'deploy of r5 failed on h1: [^"]*' "$T/deploy-r5.log" | head -1 | cut -c1-300 | sed 's/^/   /'
grep -q 'deploy of r5 failed on h1: agent deploy exited 3 (agent not reachable).*Not touched: h2, h3' "$T/deploy-r5.log" ||
	fail "unreachable: no message naming h1, exit 3 and the untouched hosts"
for h in "${hosts[@]}"; do [ "$(current_of "$h")" = r3 ] || fail "unreachable: $h is not on r3"; done
load_stop failure
rm -f "$T/h2/root/fail-r4"

echo "== case 4: agent upgrade scaleout-1 -> scaleout-2 on every host"
declare -A before
for h in "${hosts[@]}"; do before[$h]=$(agent_status "$h" | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["pid"], sorted(w["pid"] for g in s["generations"] for w in g["workers"]))'); done
load_start upgrade
if playbook ansible/upgrade-agent.yml -e "agent_new_bin=$T/bin/agent-2" >"$T/upgrade.log" 2>&1; then
	for h in "${hosts[@]}"; do
		after=$(agent_status "$h" | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["version"], s["pid"], sorted(w["pid"] for g in s["generations"] for w in g["workers"]))')
		[ "$after" = "scaleout-2 ${before[$h]}" ] || fail "upgrade: $h: $after, before: ${before[$h]}"
	done
	echo "   after: $(agent_status h1 | python3 -c 'import json,sys; s=json.load(sys.stdin); print("h1 version", s["version"], "pid", s["pid"], "workers", sorted(w["pid"] for g in s["generations"] for w in g["workers"]))') (before: ${before[h1]})"
else
	fail "upgrade: the playbook failed"; tail -30 "$T/upgrade.log"
fi
load_stop upgrade

# --- optional measurement: an agent restart without a socket unit ----------
# SCALEOUT_MEASURE=1: restart h1's agent under the same load, first as it is,
# then out of rotation (disable server, drain, restart, enable server).
# Figures only: the first is expected to fail requests.
restart_agent() {
	local h=$1 p=${agent_pid[$1]} keep=() q
	kill -TERM "$p"
	wait "$p" || true
	for q in "${pids[@]}"; do [ "$q" = "$p" ] || keep+=("$q"); done
	pids=("${keep[@]}")
	ip netns exec "${tag}-$h" "$T/$h/bin/agent" run -c "$T/$h/deploy.toml" >>"$T/$h/agent.log" 2>&1 &
	agent_pid[$h]=$!
	pids+=($!)
	for _ in $(seq 200); do
		agent_status "$h" 2>/dev/null | python3 -c 'import json,sys; s=json.load(sys.stdin); w=[w["state"] for g in s["generations"] for w in g["workers"]]; sys.exit(0 if w and all(x == "ready" for x in w) else 1)' 2>/dev/null && return 0
		sleep 0.1
	done
	echo "agent on $h did not come back"; return 1
}
if [ "${SCALEOUT_MEASURE:-}" = 1 ]; then
	helper=ansible/roles/handoff/files/haproxy_runtime.py
	echo "== measure: restart h1's agent under load, no draining"
	load_start restart-plain
	restart_agent h1
	for _ in $(seq 100); do all_up && break; sleep 0.1; done
	sleep 1
	load_stop restart-plain measure
	echo "== measure: restart h1's agent under load, drained through haproxy first"
	load_start restart-drained
	python3 "$helper" "$T/haproxy.sock" disable app h1 30 | sed 's/^/   /'
	restart_agent h1
	python3 "$helper" "$T/haproxy.sock" enable app h1 30 | sed 's/^/   /'
	sleep 1
	load_stop restart-drained measure
fi

echo "== scaleout: $(ms_since "$began") ms in all"
echo "scaleout: $good_cases passed, $bad_cases failed"
[ "$failed" = 0 ]
