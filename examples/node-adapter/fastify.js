// Fastify as its "Getting started" guide writes it (port from PORT), no
// signal handler.
const fastify = require('fastify')({ logger: false })

fastify.get('/', async (request, reply) => {
  reply.type('text/plain')
  return `hello from ${process.env.DEPLOY_RELEASE_ID}`
})

const start = async () => {
  try {
    await fastify.listen({ port: Number(process.env.PORT) || 3000 })
    console.log('listening on', fastify.server.address())
  } catch (err) {
    console.error(err)
    process.exit(1)
  }
}
start()
