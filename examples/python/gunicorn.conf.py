"""gunicorn settings for handoff (Debian's gunicorn 20.1, `gunicorn wsgi:app`).

Sockets: no `bind` here. gunicorn takes the inherited sockets itself when
LISTEN_PID is its own pid and LISTEN_FDS is set (systemd socket activation),
which is what the agent passes. `--bind fd://3` also works, but only without
LISTEN_FDS in the environment: with both, gunicorn 20.1 opens fd 3 twice and
fails to start.

Graceful stop: gunicorn's SIGTERM stops accepting and lets each worker finish
the requests it has, up to graceful_timeout. It has no grace for idle
keep-alive connections (the gthread worker closes them at exit), so keep-alive
is off (keepalive = 0): every response carries `Connection: close`, no
connection is ever idle between requests, and no client can hit a stale one.

Readiness: `listen` works with the gthread worker (its epoll set holds the
listening socket, visible in /proc/<pid>/fdinfo once the app is loaded);
the sync worker waits in select(), which leaves no trace, so with it use
`notify`: the arbiter sends READY=1 itself. preload_app loads the app in the
arbiter before READY=1, so an app that cannot even be imported exits with an
error instead of reporting ready.
"""
import os

worker_class = "gthread"
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
threads = 4
keepalive = 0
graceful_timeout = 10
preload_app = True
accesslog = None
errorlog = "-"
