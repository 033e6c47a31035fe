// Express as its "Hello world" tutorial writes it: no socket activation, no
// signal handler. handoff's Node adapter makes it serve on the agent's socket
// and stop gracefully.
const express = require('express')
const app = express()
const port = process.env.PORT || 3000

app.get('/', (req, res) => {
  res.send(`hello from ${process.env.DEPLOY_RELEASE_ID}`)
})

app.listen(port, () => {
  console.log(`Example app listening on port ${port}`)
})
