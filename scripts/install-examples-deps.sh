#!/usr/bin/env bash
# Installs the Debian packages the examples under examples/ need, only when
# they are missing: gunicorn (Python WSGI server, /usr/bin/gunicorn, with
# Debian's /usr/bin/python3) and puma (Ruby Rack server, /usr/bin/puma, pulls
# in ruby and ruby-rack). Node and systemd-socket-activate come from
# scripts/install-deps.sh. Idempotent: prints nothing and touches nothing when
# everything is there. Needs root (apt-get).
set -euo pipefail

need=()
command -v systemd-socket-activate >/dev/null || need+=(systemd)
command -v node >/dev/null || need+=(nodejs)
[ -x /usr/bin/python3 ] || need+=(python3)
[ -x /usr/bin/gunicorn ] || need+=(gunicorn)
[ -x /usr/bin/puma ] || need+=(puma)
if [ ${#need[@]} -gt 0 ]; then
	echo "== apt-get install ${need[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
