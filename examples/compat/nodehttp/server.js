// Node's http module at its default stop: on SIGTERM, server.close()
// (which since Node 19 also closes idle keep-alive connections). It
// listens on the socket passed as fd 3 (systemd socket activation).
const http = require("node:http");

const release = process.env.DEPLOY_RELEASE_ID || "dev";

const server = http.createServer((req, res) => {
  res.writeHead(200, { "Content-Type": "text/plain" });
  res.end(`hello from ${release}\n`);
});

server.listen({ fd: 3 });

process.on("SIGTERM", () => {
  server.close();
});
