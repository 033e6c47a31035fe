#!/usr/bin/env python3
"""Takes one server of an haproxy backend out of rotation, or puts it back,
through haproxy's runtime API (its stats socket), and waits for the effect.

  haproxy_runtime.py SOCKET disable BACKEND SERVER TIMEOUT_S
      `disable server BACKEND/SERVER` (maintenance: no new requests), then
      waits until the server has no session left, so that its in-flight
      requests have finished. A drain that outlasts TIMEOUT_S is reported
      (drained: false) but not an error: the agent drains its own workers.
  haproxy_runtime.py SOCKET enable BACKEND SERVER TIMEOUT_S [--no-wait]
      `enable server BACKEND/SERVER`, then waits until haproxy sees it UP
      (its health checks pass); not UP within TIMEOUT_S is an error.
  haproxy_runtime.py SOCKET state BACKEND SERVER
      the server's row of `show stat`.

SOCKET is a unix socket path, or HOST:PORT for a TCP stats socket; it needs
`level admin`. Prints one JSON line; on error one line on stderr, exit 1.
Standard library only: it runs wherever Ansible runs its modules.
"""
import csv
import io
import json
import socket
import sys
import time


def call(addr, command):
    if "/" in addr:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target = addr
    else:
        host, _, port = addr.rpartition(":")
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        target = (host.strip("[]"), int(port))
    with s:
        s.settimeout(5)
        s.connect(target)
        s.sendall(command.encode() + b"\n")
        out = b""
        while True:
            b = s.recv(65536)
            if not b:
                return out.decode(errors="replace")
            out += b


def row(addr, backend, server):
    text = call(addr, "show stat").lstrip("# ")
    for r in csv.DictReader(io.StringIO(text)):
        if r.get("pxname") == backend and r.get("svname") == server:
            return r
    raise LookupError(f"no server {backend}/{server} in show stat")


def summary(r):
    return {k: r.get(k, "") for k in ("status", "scur", "chkfail", "chkdown", "check_status")}


def main(argv):
    if len(argv) < 5 or argv[2] not in ("disable", "enable", "state"):
        raise ValueError("usage: haproxy_runtime.py SOCKET disable|enable|state BACKEND SERVER [TIMEOUT_S] [--no-wait]")
    addr, op, backend, server = argv[1:5]
    name = f"{backend}/{server}"
    out = {"server": name, "op": op}
    if op == "state":
        out.update(summary(row(addr, backend, server)))
        return out
    timeout = float(argv[5]) if len(argv) > 5 else 30.0
    wait = "--no-wait" not in argv[6:]
    reply = call(addr, f"{op} server {name}").strip()
    if reply:  # haproxy answers these commands with nothing when they worked
        raise RuntimeError(f"{op} server {name}: {reply}")
    start = time.monotonic()
    while True:
        r = row(addr, backend, server)
        if op == "disable":
            done = r.get("scur") == "0"
        else:
            done = not wait or r.get("status", "").startswith("UP") or r.get("status") == "no check"
        if done or time.monotonic() - start >= timeout:
            break
        time.sleep(0.05)
    out.update(summary(r))
    out["waited_s"] = round(time.monotonic() - start, 3)
    if op == "disable":
        out["drained"] = done
    elif not done:
        raise TimeoutError(f"{name} not UP {timeout:g}s after enable server: status {r.get('status')}, last check {r.get('check_status')}")
    return out


if __name__ == "__main__":
    try:
        print(json.dumps(main(sys.argv)))
    except Exception as e:  # one line for the playbook's message
        print(f"haproxy {' '.join(sys.argv[2:5])}: {e}", file=sys.stderr)
        sys.exit(1)
