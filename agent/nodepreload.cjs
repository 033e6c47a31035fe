'use strict';
// handoff's Node adapter ([app] adapter = "node"). The agent writes this file
// into <root>/.agent/node/ and appends `--require <this file>` to each
// worker's NODE_OPTIONS; HANDOFF_NODE_ADAPTER carries, as JSON, the agent's
// listening sockets (fd, name, address, inode), the stop signal and the drain
// timeout.
//
// What it does, in the main thread of a process whose inherited fds are the
// agent's sockets (checked by inode, so a fd 3 that is something else, such
// as a cluster worker's IPC channel, is never taken):
//   - the first listen(port), listen(port, host) or listen({port}) of any
//     net.Server (http, https, Express, Fastify…) on a port the agent holds
//     serves on the agent's socket for that port instead (listen({fd})): a
//     real listen on the inherited fd. The host the app names is ignored: the
//     agent's address decides. listen(path) of a unix socket the agent holds
//     at that path is taken the same way. Each inherited socket is taken once.
//   - listen(0), another unix path, a handle or an fd, and a port the agent
//     does not hold (one line on stderr) listen as without the adapter.
//   - once it has taken a socket, it stops gracefully on the stop signal if,
//     at that moment, the app has no listener of its own for that signal:
//     stop accepting (close the listening handle in this process; the agent
//     keeps the socket), `Connection: close` on every response from then on,
//     close a connection only once it has been idle for a grace with nothing
//     read, exit 0 when none is left, or just before the drain timeout.
// It changes nothing else: no process.env entry, no require hook; a worker
// thread or a cluster worker loads it and does nothing.
(function handoffNodeAdapter() {
  const config = parseConfig(process.env.HANDOFF_NODE_ADAPTER);
  if (!config) return;
  if (!require('node:worker_threads').isMainThread) return;
  // A cluster worker's servers listen through its primary. (Node removes
  // NODE_UNIQUE_ID from process.env before preloads run.)
  if (require('node:cluster').isWorker) return;

  const net = require('node:net');
  const fs = require('node:fs');
  const tag = 'handoff node adapter';
  const originalListen = net.Server.prototype.listen;
  const taken = new Set(); // fds adopted by a server in this process
  const warned = new Set(); // ports warned about
  const adopted = []; // [server, state]
  let stopping = false;
  let deferred = false; // the app's own handler took a stop signal
  let stoppedAt = 0;

  net.Server.prototype.listen = function listen(...args) {
    const want = targetOf(args);
    if (want === null || want === 0) return originalListen.apply(this, args);
    const sock = pick(want);
    if (!sock) {
      if (typeof want === 'number' && !warned.has(want)) {
        warned.add(want);
        process.stderr.write(`${tag}: listen on port ${want}: the agent holds no socket on it (${held()}); ` +
          `listening on it directly (set PORT or [[listen]] address to match)\n`);
      }
      return originalListen.apply(this, args);
    }
    taken.add(sock.fd);
    const opts = { fd: sock.fd };
    const o = typeof args[0] === 'object' && args[0] !== null ? args[0] : null;
    if (o && o.backlog !== undefined) opts.backlog = o.backlog;
    else if (!o) { // listen(port, [host], [backlog], [cb]), read as Node reads it
      const b = (args.length > 1 && toNumber(args[1])) || (args.length > 2 && toNumber(args[2]));
      if (b) opts.backlog = b;
    }
    if (o && o.signal !== undefined) opts.signal = o.signal;
    track(this);
    const cb = typeof args[args.length - 1] === 'function' ? args[args.length - 1] : undefined;
    return cb ? originalListen.call(this, opts, cb) : originalListen.call(this, opts);
  };

  function toNumber(x) {
    return (x = Number(x)) >= 0 ? x : false;
  }

  function parseConfig(text) {
    if (!text) return null;
    try {
      const c = JSON.parse(text);
      if (!Array.isArray(c.sockets)) return null;
      return c;
    } catch (err) {
      process.stderr.write(`handoff node adapter: HANDOFF_NODE_ADAPTER: ${err.message}\n`);
      return null;
    }
  }

  // targetOf returns what listen(...args) asks for, following the forms
  // net.Server.listen accepts: a TCP port (0 for an ephemeral one), a unix
  // socket path as a string, or null for anything else (a handle, an fd, an
  // invalid port: Node decides).
  function targetOf(args) {
    let port = args[0];
    if (typeof port === 'object' && port !== null) {
      if (port.fd !== undefined || port.handle !== undefined || port._handle !== undefined) return null;
      if (port.path !== undefined) return typeof port.path === 'string' ? port.path : null;
      port = port.port;
    }
    if (port === undefined || port === null || typeof port === 'function') return 0;
    if (typeof port !== 'number' && typeof port !== 'string') return null;
    if (typeof port === 'string' && port.trim().length === 0) return null;
    const n = +port;
    if (n === n >>> 0 && n <= 0xffff) return n;
    return typeof port === 'string' ? port : null; // a pipe path
  }

  // pick returns the first socket not taken yet that listens where want
  // says and whose fd is, in this process, the very socket the agent listed.
  function pick(want) {
    for (const s of config.sockets) {
      if (taken.has(s.fd)) continue;
      if (typeof want === 'number' ? portOfAddress(s.address) !== want : s.address !== 'unix:' + want) continue;
      try {
        const st = fs.fstatSync(s.fd, { bigint: true });
        if (st.isSocket() && String(st.ino) === String(s.inode)) return s;
      } catch (_) {
        // not open in this process (a child that did not inherit it)
      }
    }
    return null;
  }

  function portOfAddress(a) {
    if (typeof a !== 'string' || a.startsWith('unix:')) return -1;
    const i = a.lastIndexOf(':');
    return i < 0 ? -1 : Number(a.slice(i + 1));
  }

  function held() {
    const l = config.sockets.map((s) => `${s.name}=${s.address}`);
    return l.length ? 'it holds ' + l.join(', ') : 'it holds none';
  }

  const signal = typeof config.stop_signal === 'string' ? config.stop_signal : 'SIGTERM';
  const drainMs = Number(config.drain_ms) > 0 ? Number(config.drain_ms) : 30000;
  // Exit before the agent's SIGKILL at drain_timeout.
  const capMs = drainMs - Math.min(2000, drainMs / 10);
  const graceMs = Math.min(1000, capMs / 4);

  function track(server) {
    // conns: socket -> {res: response in progress or null, idleSince, bytesRead}
    const state = { conns: new Map() };
    adopted.push([server, state]);
    if (adopted.length === 1 && signal !== 'SIGKILL') process.on(signal, onSignal);
    const secure = typeof server.setSecureContext === 'function';
    server.on(secure ? 'secureConnection' : 'connection', (socket) => {
      state.conns.set(socket, { res: null, idleSince: Date.now(), bytesRead: 0 });
      socket.on('close', () => {
        state.conns.delete(socket);
        if (stopping) maybeExit();
      });
    });
    // First among the request listeners: the header is set before the app's
    // handler can send anything.
    server.prependListener('request', (req, res) => {
      const st = state.conns.get(req.socket);
      if (stopping && !res.headersSent) res.setHeader('Connection', 'close');
      if (!st || typeof res.on !== 'function') return;
      st.res = res;
      res.on('close', () => {
        st.res = null;
        st.idleSince = Date.now();
        st.bytesRead = req.socket.bytesRead;
      });
    });
  }

  function onSignal() {
    // The app's own handler wins, whenever it was installed.
    if (process.listeners(signal).some((l) => l !== onSignal)) {
      if (!deferred) process.stderr.write(`${tag}: ${signal}: the app handles it\n`);
      deferred = true; // say it once
      return;
    }
    if (stopping) return;
    stopping = true;
    stoppedAt = Date.now();
    let open = 0;
    for (const [, state] of adopted) open += state.conns.size;
    process.stderr.write(`${tag}: ${signal}: stopping gracefully (${open} connection(s) open)\n`);
    setTimeout(() => {
      let open = 0;
      for (const [, state] of adopted) open += state.conns.size;
      process.stderr.write(`${tag}: ${signal}: ${open} connection(s) still open after ${capMs} ms; exiting\n`);
      process.exit(0);
    }, capMs).unref();
    for (const [server, state] of adopted) {
      // http.Server's close would also close idle keep-alive connections at
      // once (Node >= 19): a client reusing one at that moment sees a reset.
      // net.Server's close only stops accepting.
      if (server.listening) net.Server.prototype.close.call(server);
      for (const st of state.conns.values()) {
        if (st.res && !st.res.headersSent) st.res.setHeader('Connection', 'close');
      }
    }
    setInterval(sweepIdle, Math.max(10, Math.min(100, graceMs / 4))).unref();
    maybeExit();
  }

  function sweepIdle() {
    const now = Date.now();
    for (const [, state] of adopted) {
      for (const [socket, st] of state.conns) {
        if (st.res) continue; // a request is being answered
        if (socket.bytesRead !== st.bytesRead) continue; // the next request is arriving
        if (now - Math.max(st.idleSince, stoppedAt) < graceMs) continue;
        socket.destroy(); // idle, nothing read: the peer sees a FIN
      }
    }
  }

  function maybeExit() {
    for (const [, state] of adopted) if (state.conns.size > 0) return;
    process.exit(0);
  }
})();
