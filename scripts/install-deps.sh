#!/usr/bin/env bash
# Installs what the tests, the demo and the benchmarks need on a clean machine.
# Idempotent: does nothing when everything is already there.
set -euo pipefail

need=()
command -v systemd-socket-activate >/dev/null || need+=(systemd)
command -v setpriv >/dev/null || need+=(util-linux)
command -v node >/dev/null || need+=(nodejs)
# scripts/test-scaleout.sh: Ansible, sshd per host, haproxy in front.
command -v ansible-playbook >/dev/null || need+=(ansible-core)
[ -x /usr/sbin/haproxy ] || need+=(haproxy)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
command -v ip >/dev/null || need+=(iproute2)
command -v socat >/dev/null || need+=(socat)
if [ ${#need[@]} -gt 0 ]; then
	echo "== apt-get install ${need[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# The metrics tests: a real Prometheus scrapes the agent; promtool lints
# (without the exporters it recommends; the tests start their own server).
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
	echo "== apt-get install prometheus"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
go mod download
bash "$(dirname "$0")/install-examples-deps.sh"
