#!/usr/bin/env python3
"""handoff's stdlib-only Python example: `python3 server.py`, no packages.

Sockets: serves on fd 3 when LISTEN_PID is its own pid and LISTEN_FDS >= 1
(systemd socket activation, what the agent passes); otherwise on
127.0.0.1:$PORT (8080), for development.

Graceful stop on SIGTERM or SIGINT (the agent's stop_signal):
  1. stop accepting (this process's copy of the listening socket is closed;
     the socket stays open in the agent, where the next generation accepts);
  2. every response from then on carries `Connection: close`, including the
     next request on a keep-alive connection that was idle at the signal;
  3. a connection is closed only once it has been idle for GRACE (1 s) after
     the signal with nothing to read, so a client about to reuse it gets an
     answer instead of a reset;
  4. exit 0 when no connection is left, or after CAP (10 s).

Readiness: `listen` (the accept loop waits in an epoll set that holds the
listening socket) and `notify` (READY=1 to NOTIFY_SOCKET once serving).
The body names the release: "hello from $DEPLOY_RELEASE_ID\\n".
"""
import os
import select
import selectors
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import ThreadingMixIn

RELEASE = os.environ.get("DEPLOY_RELEASE_ID", "dev")
GRACE = float(os.environ.get("HANDOFF_IDLE_GRACE_MS", "1000")) / 1000  # an idle connection is kept this long after the stop signal
CAP = 10.0          # the whole stop takes at most this long
IDLE_TIMEOUT = 60.0  # an idle keep-alive connection is closed after this long


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without TCP_NODELAY, Nagle and
    # the client's delayed ACK hold each keep-alive response ~40 ms.
    disable_nagle_algorithm = True

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def parse_request(self):
        # The request line has arrived: the connection is busy until the
        # response is written.
        self.server.mark(self.connection, busy=True)
        return super().parse_request()

    def handle(self):
        self.close_connection = True
        self.handle_one_request()
        self.server.mark(self.connection, busy=False)
        while not self.close_connection:
            self.handle_one_request()
            self.server.mark(self.connection, busy=False)

    def do_GET(self):
        body = f"hello from {RELEASE}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if self.server.stopping:
            self.send_header("Connection", "close")  # also sets close_connection
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass  # no access log


class Server(ThreadingMixIn, HTTPServer):
    daemon_threads = True

    def __init__(self, sock):
        super().__init__(sock.getsockname(), Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.socket.setblocking(False)  # several workers wake for one connection
        self.stopping = False
        self.stopped_at = 0.0
        self.lock = threading.Lock()
        self.conns = {}  # socket -> [busy, idle_since]
        self.wake_r, self.wake_w = os.pipe()

    def track(self, conn):
        with self.lock:
            self.conns[conn] = [False, time.monotonic()]

    def untrack(self, conn):
        with self.lock:
            self.conns.pop(conn, None)

    def mark(self, conn, busy):
        with self.lock:
            if conn in self.conns:
                self.conns[conn] = [busy, time.monotonic()]

    def stop(self, signum=None, frame=None):
        self.stopping = True
        self.stopped_at = time.monotonic()
        os.write(self.wake_w, b"x")

    def close_idle(self, grace, since_stop):
        """Shut down connections idle for grace seconds; return how many are open."""
        now = time.monotonic()
        with self.lock:
            items = list(self.conns.items())
        for conn, (busy, idle_since) in items:
            if busy:
                continue
            since = max(idle_since, self.stopped_at) if since_stop else idle_since
            if now - since < grace:
                continue
            try:
                readable, _, _ = select.select([conn], [], [], 0)
                if readable:
                    continue  # the next request (or the peer's FIN) is arriving
                conn.shutdown(socket.SHUT_RDWR)  # the handler reads EOF and ends
            except (OSError, ValueError):
                pass  # closed meanwhile
        with self.lock:
            return len(self.conns)

    def serve(self):
        # An epoll set, not socketserver's poll(): it shows in
        # /proc/<pid>/fdinfo, which is what handoff's `listen` readiness reads.
        with selectors.EpollSelector() as sel:
            sel.register(self.socket, selectors.EVENT_READ)
            sel.register(self.wake_r, selectors.EVENT_READ)
            notify_ready()
            while not self.stopping:
                for key, _ in sel.select(timeout=1.0):
                    if key.fileobj is self.socket:
                        self.accept()
                self.close_idle(IDLE_TIMEOUT, since_stop=False)
        self.socket.close()
        deadline = self.stopped_at + CAP
        while self.close_idle(GRACE, since_stop=True) > 0 and time.monotonic() < deadline:
            time.sleep(0.05)

    def accept(self):
        try:
            conn, addr = self.socket.accept()
        except (BlockingIOError, InterruptedError):
            return  # another worker took it
        conn.setblocking(True)
        self.track(conn)  # before the handler thread starts, so a stop sees it
        self.process_request(conn, addr)


def notify_ready():
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(b"READY=1", addr)
        except OSError as e:
            print(f"notify: {e}", file=sys.stderr)


def listening_socket():
    if os.environ.get("LISTEN_PID") == str(os.getpid()) and int(os.environ.get("LISTEN_FDS", "0")) >= 1:
        for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(k, None)
        return socket.socket(fileno=3)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(os.environ.get("PORT", "8080"))))
    s.listen(128)
    return s


def main():
    server = Server(listening_socket())
    signal.signal(signal.SIGTERM, server.stop)
    signal.signal(signal.SIGINT, server.stop)
    server.serve()


if __name__ == "__main__":
    main()
