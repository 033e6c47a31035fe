'use strict';
// A Node HTTP server for handoff: it serves on the listening socket the agent
// passes as fd 3 (systemd socket activation: LISTEN_FDS=1, LISTEN_PID=own pid)
// and stops so that keep-alive clients never see a reset.
//
// Graceful stop (SIGTERM or SIGINT, the agent's stop_signal):
//   1. stop accepting: the listening fd is closed in this process only; the
//      socket stays open in the agent, where the next generation accepts;
//   2. every response from now on carries `Connection: close`, including the
//      next request on a keep-alive connection that was idle at the signal;
//   3. a connection is closed only once it has been idle for GRACE_MS (1 s)
//      after the signal, so a client that was about to reuse it gets an
//      answer instead of a reset ("stale keep-alive");
//   4. exit 0 when no connection is left, or after CAP_MS (10 s) in any case.
// HANDOFF_EXAMPLE_SHUTDOWN=default gives Node's default instead
// (server.close() + server.closeIdleConnections()), for comparison.
//
// Readiness: `listen` (Node registers fd 3 in its epoll set once listening).
const http = require('node:http');
const net = require('node:net');

const release = process.env.DEPLOY_RELEASE_ID || 'dev';
const GRACE_MS = positive(process.env.HANDOFF_IDLE_GRACE_MS, 1000);
const CAP_MS = positive(process.env.HANDOFF_DRAIN_CAP_MS, 10000);
const defaultShutdown = process.env.HANDOFF_EXAMPLE_SHUTDOWN === 'default';

function positive(v, def) {
  const n = Number(v);
  return Number.isFinite(n) && n > 0 ? n : def;
}

let stopping = false;
let stoppedAt = 0;
// socket -> {res: response in progress or null, idleSince: ms, bytesRead}
const conns = new Map();

const server = http.createServer((req, res) => {
  res.setHeader('Content-Type', 'text/plain; charset=utf-8');
  res.end(`hello from ${release}\n`);
});

server.on('connection', (socket) => {
  conns.set(socket, { res: null, idleSince: Date.now(), bytesRead: 0 });
  socket.on('close', () => {
    conns.delete(socket);
    if (stopping) maybeExit();
  });
});

// Registered before the handler runs (prependListener), so the header is set
// before the handler can send anything.
server.prependListener('request', (req, res) => {
  const st = conns.get(req.socket);
  if (stopping) res.setHeader('Connection', 'close');
  if (!st) return;
  st.res = res;
  res.on('close', () => {
    st.res = null;
    st.idleSince = Date.now();
    st.bytesRead = req.socket.bytesRead;
  });
});

function listen() {
  const fds = Number(process.env.LISTEN_FDS || 0);
  if (fds >= 1 && Number(process.env.LISTEN_PID) === process.pid) {
    server.listen({ fd: 3 });
  } else {
    server.listen(Number(process.env.PORT || 8080), '127.0.0.1');
  }
}

function maybeExit() {
  if (conns.size === 0) process.exit(0);
}

function sweepIdle() {
  const now = Date.now();
  for (const [socket, st] of conns) {
    if (st.res) continue; // a request is being answered
    if (socket.bytesRead !== st.bytesRead) continue; // the next request is arriving
    if (now - Math.max(st.idleSince, stoppedAt) < GRACE_MS) continue;
    socket.destroy(); // idle, nothing unread: the peer sees a FIN
  }
}

function stop(signal) {
  if (stopping) return;
  stopping = true;
  stoppedAt = Date.now();
  setTimeout(() => process.exit(0), CAP_MS).unref();
  if (defaultShutdown) {
    server.close(() => process.exit(0));
    server.closeIdleConnections();
    return;
  }
  // http.Server.prototype.close would also close idle keep-alive connections
  // at once (Node >= 19); net.Server's close only stops accepting.
  net.Server.prototype.close.call(server);
  for (const st of conns.values()) {
    if (st.res && !st.res.headersSent) st.res.setHeader('Connection', 'close');
  }
  setInterval(sweepIdle, Math.min(100, GRACE_MS / 4)).unref();
  maybeExit();
}

process.on('SIGTERM', stop);
process.on('SIGINT', stop);
listen();
