// An app that stops on SIGTERM by itself: the adapter must leave the signal
// to it. Its stop: stop accepting, `Connection: close` from then on, close a
// keep-alive connection once idle for 1 s, exit 0 when none is left.
const http = require('node:http');
const net = require('node:net');

let stopping = false;
const idle = new Map(); // socket -> {busy, since, bytesRead}

const server = http.createServer((req, res) => {
  if (stopping) res.setHeader('Connection', 'close');
  res.end(`hello from ${process.env.DEPLOY_RELEASE_ID}\n`);
});
server.on('connection', (socket) => {
  idle.set(socket, { busy: false, since: Date.now(), bytesRead: 0 });
  socket.on('close', () => {
    idle.delete(socket);
    if (stopping && idle.size === 0) process.exit(0);
  });
});
server.prependListener('request', (req, res) => {
  const st = idle.get(req.socket);
  if (!st) return;
  st.busy = true;
  res.on('close', () => Object.assign(st, { busy: false, since: Date.now(), bytesRead: req.socket.bytesRead }));
});

process.on('SIGTERM', () => {
  console.log('own SIGTERM handler: stopping');
  stopping = true;
  const at = Date.now();
  net.Server.prototype.close.call(server); // stop accepting; idle connections stay
  setInterval(() => {
    for (const [socket, st] of idle) {
      if (!st.busy && socket.bytesRead === st.bytesRead && Date.now() - Math.max(st.since, at) >= 1000) socket.destroy();
    }
  }, 100).unref();
  if (idle.size === 0) process.exit(0);
});

server.listen(process.env.PORT || 3000);
