// A plain node:http server: listen(PORT), no signal handler. Each answer
// waits 5 ms, so that a stop finds requests in flight.
const http = require('node:http');

const server = http.createServer((req, res) => {
  setTimeout(() => {
    res.setHeader('Content-Type', 'text/plain');
    res.end(`hello from ${process.env.DEPLOY_RELEASE_ID}\n`);
  }, 5);
});

server.listen(process.env.PORT || 3000, () => {
  console.log('listening on', server.address());
});
