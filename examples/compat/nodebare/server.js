// A Node http server with no SIGTERM handler at all: the signal kills it,
// whatever it was doing. It listens on the socket passed as fd 3 (systemd
// socket activation).
const http = require("node:http");

const release = process.env.DEPLOY_RELEASE_ID || "dev";

http
  .createServer((req, res) => {
    res.writeHead(200, { "Content-Type": "text/plain" });
    res.end(`hello from ${release}\n`);
  })
  .listen({ fd: 3 });
