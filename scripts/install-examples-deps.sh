#!/usr/bin/env bash
# Installs the Debian packages the examples under examples/ need, only when
# they are missing:
#   gunicorn        Python WSGI server (/usr/bin/gunicorn, Debian's python3)
#   puma            Ruby Rack server (/usr/bin/puma; pulls in ruby, ruby-nio4r)
#   ruby-sd-notify  the sd_notify gem puma needs to send READY=1 (notify readiness)
# plus systemd (systemd-socket-activate) and nodejs when absent; and, with
# npm, the pinned packages of examples/node-adapter (express, fastify) from
# its package-lock.json, when they are not installed there yet.
# Idempotent: prints nothing and changes nothing when everything is there.
# Needs root (apt-get).
set -euo pipefail

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

need=()
command -v systemd-socket-activate >/dev/null || need+=(systemd)
command -v node >/dev/null || need+=(nodejs)
for pkg in python3 gunicorn puma ruby-sd-notify; do
	installed "$pkg" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
	echo "== apt-get install ${need[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# examples/node-adapter: npm ci from the lock file when node_modules does not
# hold what package-lock.json pins.
adapter="$(cd "$(dirname "$0")/.." && pwd)/examples/node-adapter"
if ! (cd "$adapter" && node -e '
	const lock = require("./package-lock.json").packages;
	for (const [p, v] of Object.entries(lock)) {
		if (p && require("./" + p + "/package.json").version !== v.version) process.exit(1);
	}' 2>/dev/null); then
	echo "== npm ci in examples/node-adapter"
	(cd "$adapter" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
