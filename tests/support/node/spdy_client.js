'use strict'
// A SPDY/3.1 client on npm's spdy-transport (an implementation crirt did not write) for crirt's SpdySession tests.
// Usage: node spdy_client.js PORT SCENARIO [ARGS...]. Connects to 127.0.0.1:PORT, runs one scenario against the
// server side the Python test drives, and prints JSON lines: {"event": ...} progress lines, then one result.
// Scenarios that wait for the test read a line ("go") on stdin.

const crypto = require('crypto')
const net = require('net')
const readline = require('readline')
const { once } = require('events')
const transport = require('spdy-transport')

const [port, scenario, ...args] = process.argv.slice(2)
const stdinLines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]()

function print (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

async function waitForGo () {
  const { value } = await stdinLines.next()
  if (value !== 'go') throw new Error('expected "go" on stdin, got ' + value)
}

// The bytes both sides agree on for bulk transfers: i % 251, which never lines up with frame or window sizes.
function pattern (size) {
  const block = Buffer.from(Array.from({ length: 251 }, (_, i) => i))
  const out = Buffer.alloc(size)
  for (let offset = 0; offset < size; offset += block.length) block.copy(out, offset)
  return out
}

function sha256 (buf) {
  return crypto.createHash('sha256').update(buf).digest('hex')
}

async function connect (options = {}) {
  const socket = net.connect(+port, '127.0.0.1')
  await once(socket, 'connect')
  socket.setNoDelay(true)
  const conn = transport.connection.create(socket, { protocol: 'spdy', isServer: false, ...options })
  conn.on('error', (err) => print({ event: 'connection-error', message: err.message }))
  conn.start(3.1)
  return conn
}

// Open a stream (SYN_STREAM right away, no waiting for earlier replies); `response` resolves with the status.
function open (conn, streamtype) {
  const stream = conn.request({ method: 'POST', path: '/', headers: { streamtype } })
  stream.response = new Promise((resolve, reject) => {
    stream.once('response', (status) => resolve(status))
    stream.once('error', reject)
  })
  stream.on('error', () => {})
  return stream
}

// Everything the peer sends until its FIN.
async function collect (stream) {
  const chunks = []
  stream.on('data', (chunk) => chunks.push(chunk))
  await once(stream, 'end')
  return Buffer.concat(chunks)
}

// Write in 64 KiB pieces, respecting the stream's backpressure (and so the server's window), then FIN.
async function upload (stream, data) {
  for (let offset = 0; offset < data.length; offset += 65536) {
    if (!stream.write(data.subarray(offset, offset + 65536))) await once(stream, 'drain')
  }
  stream.end()
}

async function finish (conn) {
  const closed = once(conn, 'close')
  conn.end()
  await closed
}

const scenarios = {
  // N streams opened back to back; each sends a payload with FIN and gets the server's echo.
  async streams (count) {
    const conn = await connect()
    const streams = Array.from({ length: +count }, (_, i) => open(conn, 's' + i))
    streams.forEach((stream, i) => stream.end('payload-' + i))
    const results = await Promise.all(streams.map(async (stream) => {
      const status = await stream.response
      return { id: stream.id, status, body: (await collect(stream)).toString() }
    }))
    await finish(conn)
    return { results }
  },

  // SIZE bytes to the server, which answers with the sha256 it computed.
  async upload (size) {
    const conn = await connect()
    const stream = open(conn, 'upload')
    const data = pattern(+size)
    const reply = collect(stream)
    await stream.response
    await upload(stream, data)
    const body = (await reply).toString()
    await finish(conn)
    return { sent: sha256(data), reply: body }
  },

  // The server sends SIZE bytes; we hold off reading (so our 64 KiB window shuts) until the test says "go".
  async download (size) {
    const conn = await connect({ windowSize: 65536 })
    const stream = open(conn, 'download')
    await stream.response
    print({ event: 'ready' })
    await waitForGo()
    const body = await collect(stream)
    await finish(conn)
    return { length: body.length, sha256: sha256(body), expected: sha256(pattern(+size)) }
  },

  // SIZE bytes up while the server echoes them back as they arrive: both directions at once.
  async echo (size) {
    const conn = await connect()
    const stream = open(conn, 'echo')
    const data = pattern(+size)
    const echoed = collect(stream)
    await stream.response
    await upload(stream, data)
    const body = await echoed
    await finish(conn)
    return { sent: sha256(data), echoed: sha256(body), length: body.length }
  },

  // a: we half-close first and still receive; b: the server half-closes first and we still send.
  async halfclose () {
    const conn = await connect()
    const a = open(conn, 'a')
    a.end('client-data')
    const b = open(conn, 'b')
    await Promise.all([a.response, b.response])
    const [bodyA, bodyB] = await Promise.all([collect(a), collect(b)])
    const bClosed = once(b, 'close')
    b.end('client-after-server-fin')
    await bClosed
    await finish(conn)
    return { a: bodyA.toString(), b: bodyB.toString() }
  },

  // a: we reset it mid-stream; b: still works after that; c: the server resets it.
  async rst () {
    const conn = await connect()
    const a = open(conn, 'a')
    a.write('a-data')
    await a.response
    const [first] = await once(a, 'data')
    a.abort()
    const b = open(conn, 'b')
    b.end('b-data')
    await b.response
    const bodyB = await collect(b)
    const c = open(conn, 'c')
    const cErrors = []
    c.on('error', (err) => cErrors.push(err.message))
    const cData = []
    c.on('data', (chunk) => cData.push(chunk))
    await once(c, 'close')
    await finish(conn)
    return { a_first: first.toString(), b: bodyB.toString(), c_data: Buffer.concat(cData).toString(), c_errors: cErrors }
  },

  // COUNT pings, each answered before the next.
  async ping (count) {
    const conn = await connect()
    let answered = 0
    for (let i = 0; i < +count; i++) {
      await new Promise((resolve, reject) => conn.ping((err) => (err ? reject(err) : resolve())))
      answered++
    }
    await finish(conn)
    return { answered }
  },

  // The server sends GOAWAY while stream a is open: a new stream is refused by our side, a carries on.
  async goaway () {
    const conn = await connect()
    const a = open(conn, 'a')
    await a.response
    const [first] = await once(a, 'data')
    const bError = await new Promise((resolve) => {
      const b = conn.request({ method: 'POST', path: '/', headers: { streamtype: 'b' } }, (err) => resolve(err && err.message))
      b.on('error', (err) => resolve(err.message))
    })
    const rest = collect(a)
    const closed = once(conn, 'close')
    a.end('a-after-goaway')
    const body = await rest
    await closed
    return { a_first: first.toString(), a_rest: body.toString(), b_error: bError }
  }
}

scenarios[scenario](...args).then(
  (result) => { print(result); process.exit(0) },
  (err) => { print({ error: String(err && err.stack) }); process.exit(1) }
)
