"""handoff's Python example app (WSGI), served by gunicorn: see gunicorn.conf.py.

The body names the release that serves: "hello from $DEPLOY_RELEASE_ID\n".
"""
import os

RELEASE = os.environ.get("DEPLOY_RELEASE_ID", "dev")


def app(environ, start_response):
    body = f"hello from {RELEASE}\n".encode()
    start_response("200 OK", [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
    ])
    return [body]
