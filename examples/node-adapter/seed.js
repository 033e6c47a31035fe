// The shape this project started from, without its cluster module: a module
// builds the app and start() ends in app.listen(port). Deployed as it is.
const express = require('express')

function createApp() {
  const app = express()
  app.get('/', (req, res) => {
    // some work before the answer: a stop finds requests in flight
    setTimeout(() => res.send(`hello from ${process.env.DEPLOY_RELEASE_ID}`), 5)
  })
  return app
}

function start(port) {
  const app = createApp()
  app.listen(port, () => console.log(`worker ${process.pid} listening on ${port}`))
}

module.exports = { createApp, start }

if (require.main === module) {
  start(process.env.PORT || 3000)
}
