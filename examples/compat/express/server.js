// Express 5 as its documentation shows it: app.listen, and on SIGTERM
// server.close() ("Health checks and graceful shutdown"). The only change
// for handoff is where it listens: the socket passed as fd 3 (systemd
// socket activation), so handoff's compatibility suite can deploy it.
const express = require("express");

const app = express();
const release = process.env.DEPLOY_RELEASE_ID || "dev";

app.get("/", (req, res) => {
  res.type("text/plain").send(`hello from ${release}\n`);
});

const server = app.listen({ fd: 3 }, () => {
  console.log(`express ${release} listening on fd 3`);
});

process.on("SIGTERM", () => {
  console.log("SIGTERM signal received: closing HTTP server");
  server.close(() => {
    console.log("HTTP server closed");
  });
});
