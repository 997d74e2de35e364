'use strict'
// The streaming benchmark's client (bench/streaming.py): one SPDY/3.1 implementation crirt did not write
// (npm's spdy-transport), driving crirt and containerd alike the way kubectl does.
// Usage: node bench_spdy.js. Reads one JSON job per line on stdin and answers each with one JSON line:
//   {"op": "exec", "url": U}                     v4.channel.k8s.io exec with stdout+stderr (no stdin, no tty):
//       -> {"stdout", "stderr", "status", "ms", "phases"}  ms: from the connect to the status and both outputs'
//          ends; phases: ms from the connect to the 101 (upgraded), the last stream's reply (streams), the first
//          stdout byte (output) and the error stream's end (status)
//   {"op": "portforward", "url": U, "port": P, "bytes": N}   one connection to P, read N bytes:
//       -> {"bytes", "setupMs", "ms", "cpuMs", "error"}   setupMs: connect to the data stream's reply; ms: then
//          to byte N; cpuMs: this client's CPU time meanwhile (near ms means the client is the bottleneck)
// A job that fails answers {"failure": text}; the worker goes on with the next one.

const net = require('net')
const readline = require('readline')
const { once } = require('events')
const transport = require('spdy-transport')

const TIMEOUT_MS = 120000

// Go's spdystream (the kubelet's streaming library, so containerd's, and kubectl's) answers SYN_STREAM with a
// SYN_REPLY whose header block is empty; spdy-transport, written for HTTP over SPDY, resets any reply without
// `:status`. Read such a reply as 200 so that the same client speaks to both runtimes (crirt's replies carry
// `:status` and are unaffected).
const handleResponse = transport.Stream.prototype._handleResponse
transport.Stream.prototype._handleResponse = function (frame) {
  if (frame.headers[':status'] === undefined) frame.headers[':status'] = '200'
  return handleResponse.call(this, frame)
}

function within (promise, what) {
  let timer
  const timeout = new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new Error('timed out: ' + what)), TIMEOUT_MS)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

// The HTTP/1.1 upgrade to SPDY/3.1; resolves with the socket positioned after the 101's head.
async function upgrade (url, protocol) {
  const target = new URL(url)
  const socket = net.connect(+target.port, target.hostname)
  socket.setNoDelay(true)
  await once(socket, 'connect')
  socket.write(`POST ${target.pathname}${target.search} HTTP/1.1\r\nHost: ${target.host}\r\n` +
    `Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: ${protocol}\r\nContent-Length: 0\r\n\r\n`)
  let buffer = Buffer.alloc(0)
  while (buffer.indexOf('\r\n\r\n') < 0) {
    const [chunk] = await Promise.race([once(socket, 'data'), once(socket, 'end').then(() => [null])])
    if (chunk === null) throw new Error('connection closed during the upgrade: ' + buffer.toString())
    buffer = Buffer.concat([buffer, chunk])
  }
  const end = buffer.indexOf('\r\n\r\n')
  const head = buffer.subarray(0, end).toString()
  if (!head.startsWith('HTTP/1.1 101')) {
    socket.destroy()
    throw new Error('upgrade refused: ' + head.split('\r\n')[0])
  }
  socket.on('error', () => {}) // a reset shows as the streams' close; the job's own checks report it
  socket.pause()
  socket.removeAllListeners('data')
  if (end + 4 < buffer.length) socket.unshift(buffer.subarray(end + 4))
  const conn = transport.connection.create(socket, { protocol: 'spdy', isServer: false })
  conn.on('error', () => {})
  conn.start(3.1)
  return { socket, conn }
}

// Open a stream and wait for its SYN_REPLY, as kubectl does; `ended` resolves at the peer's FIN (or a reset).
async function open (conn, headers, onData) {
  const stream = conn.request({ method: 'POST', path: '/', headers })
  stream.on('error', () => {})
  await Promise.race([once(stream, 'response'), once(stream, 'close')])
  stream.ended = new Promise((resolve) => {
    stream.on('end', resolve)
    stream.on('close', resolve)
  })
  stream.on('data', onData)
  stream.resume()
  return stream
}

// GOAWAY and wait (a little) for the server to close; a server that closed first is no failure.
async function close (socket, conn) {
  if (socket.destroyed) return
  const closed = new Promise((resolve) => socket.once('close', resolve))
  conn.end()
  await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, 3000))])
  socket.destroy()
}

async function exec ({ url }) {
  const start = process.hrtime.bigint()
  const since = () => Number(process.hrtime.bigint() - start) / 1e6
  const { socket, conn } = await upgrade(url, 'v4.channel.k8s.io')
  const phases = { upgraded: since() }
  const text = { error: '', stdout: '', stderr: '' }
  const streams = {}
  for (const type of ['error', 'stdout', 'stderr']) {
    streams[type] = await open(conn, { streamtype: type }, (chunk) => {
      text[type] += chunk.toString()
      if (type === 'stdout' && phases.output === undefined) phases.output = since()
    })
  }
  phases.streams = since()
  streams.error.ended.then(() => { phases.status = since() })
  await within(Promise.all(Object.values(streams).map((s) => s.ended)), 'the exec to end')
  const ms = since()
  await close(socket, conn)
  return { stdout: text.stdout, stderr: text.stderr, status: text.error, ms, phases }
}

// Count bytes from `source` (a stream emitting 'data') until `bytes` arrived; resolves with the time of the last.
function receive (source, bytes, state) {
  return new Promise((resolve, reject) => {
    source.on('data', (chunk) => {
      state.received += chunk.length
      if (state.received >= bytes) resolve(process.hrtime.bigint())
    })
    source.on('close', () => reject(new Error(`closed after ${state.received} of ${bytes} bytes: ${state.error || ''}`)))
  })
}

async function portforward ({ url, port, bytes }) {
  const start = process.hrtime.bigint()
  const { socket, conn } = await upgrade(url, 'portforward.k8s.io')
  const headers = { port: String(port), requestid: '0' }
  const state = { received: 0, error: '' }
  await open(conn, { ...headers, streamtype: 'error' }, (chunk) => { state.error += chunk.toString() })
  // No half-close from our side: a local client that only reads keeps its end open (and containerd 1.6 ends the
  // whole forward a second after either direction ends).
  const data = conn.request({ method: 'POST', path: '/', headers: { ...headers, streamtype: 'data' } })
  data.on('error', () => {})
  const done = receive(data, bytes, state)
  done.catch(() => {})
  await Promise.race([once(data, 'response'), once(data, 'close')])
  const ready = process.hrtime.bigint()
  const cpu = process.cpuUsage()
  const last = await within(done, 'the forwarded bytes')
  const used = process.cpuUsage(cpu)
  await close(socket, conn)
  return {
    bytes: state.received,
    setupMs: Number(ready - start) / 1e6,
    ms: Number(last - ready) / 1e6,
    cpuMs: (used.user + used.system) / 1e3,
    error: state.error
  }
}

const ops = { exec, portforward }

async function main () {
  for await (const line of readline.createInterface({ input: process.stdin })) {
    if (!line.trim()) continue
    let answer
    try {
      const job = JSON.parse(line)
      answer = await ops[job.op](job)
    } catch (err) {
      answer = { failure: String(err && err.stack) }
    }
    process.stdout.write(JSON.stringify(answer) + '\n')
  }
}

main()
