#!/usr/bin/env bash
# Installs the Debian packages the examples under examples/ need, only when
# they are missing:
#   gunicorn        Python WSGI server (/usr/bin/gunicorn, Debian's python3)
#   puma            Ruby Rack server (/usr/bin/puma; pulls in ruby, ruby-nio4r)
#   ruby-sd-notify  the sd_notify gem puma needs to send READY=1 (notify readiness)
# plus systemd (systemd-socket-activate) and nodejs when absent; and, with
# npm, the pinned packages of examples/node-adapter (express, fastify) from
# its package-lock.json, when they are not installed there yet.
# and, for the compatibility suite (examples/compat_test.go):
#   python3-uvicorn python3-fastapi   FastAPI on uvicorn --fd 3
#   python3-django                    Django on gunicorn
#   ruby-sinatra                      Sinatra on puma
#   npm                               only when node came without it
# plus systemd (systemd-socket-activate) and nodejs when absent, and Express
# from the npm registry into examples/compat/express/node_modules (the
# version pinned in its package.json, no lock file), which the suite packs
# into each Express release.
# Idempotent: prints nothing and changes nothing when everything is there.
# Needs root (apt-get).
set -euo pipefail

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

need=()
command -v systemd-socket-activate >/dev/null || need+=(systemd)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
for pkg in python3 gunicorn puma ruby-sd-notify python3-uvicorn python3-fastapi python3-django ruby-sinatra; do
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
express="$(cd "$(dirname "$0")/../examples/compat/express" && pwd)"
want="$(node -p 'require(process.argv[1]).dependencies.express' "$express/package.json")"
have="$(node -p 'try { require(process.argv[1]).version } catch (e) { "" }' "$express/node_modules/express/package.json")"
if [ "$have" != "$want" ]; then
	echo "== npm install express@$want into $express/node_modules"
	(cd "$express" && npm install --no-package-lock --no-save --omit=dev --no-audit --no-fund --loglevel=error >/dev/null)
fi
