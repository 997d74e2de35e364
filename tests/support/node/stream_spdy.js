'use strict'
// A CRI streaming client on npm's spdy-transport (a SPDY/3.1 implementation crirt did not write), speaking
// what kubectl/crictl speak to a streaming URL: the HTTP upgrade, then channel.k8s.io or portforward.k8s.io.
// Usage: node stream_spdy.js URL SCENARIO_JSON. Prints one JSON result line.
//
// Scenario: {"protocols": [...X-Stream-Protocol-Version offers], "streams": ["error", "stdin", "stdout", ...],
//            "steps": [...]} for exec/attach, or {"protocols": ["portforward.k8s.io"], "forward": [{"port": N,
//            "send": "text"}, ...]} for port-forward (all pairs opened at once).
// Exec steps: {"send": text} to stdin, {"wait": regex} until stdout (+stderr) matches, {"resize": [w, h]},
// {"sendBytes": N} sends N bytes of "x" (respecting backpressure), {"end": true} half-closes stdin,
// {"disconnect": true} drops the TCP connection and prints what it has. "lengthsOnly": true reports the
// stdout length instead of the text.
// Without a disconnect the script waits for the error stream's end and prints stdout, stderr and the status.

const net = require('net')
const { once } = require('events')
const transport = require('spdy-transport')

const [url, scenarioText] = process.argv.slice(2)
const scenario = JSON.parse(scenarioText)
const started = Date.now()

function print (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

// The HTTP/1.1 upgrade; resolves with {socket, status, headers, body} (the socket only after a 101).
async function upgrade () {
  const target = new URL(url)
  const socket = net.connect(+target.port, target.hostname)
  await once(socket, 'connect')
  const offers = (scenario.protocols || []).map((p) => `X-Stream-Protocol-Version: ${p}\r\n`).join('')
  socket.write(`POST ${target.pathname}${target.search} HTTP/1.1\r\nHost: ${target.host}\r\n` +
    `Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n${offers}Content-Length: 0\r\n\r\n`)
  let buffer = Buffer.alloc(0)
  while (buffer.indexOf('\r\n\r\n') < 0) {
    const [chunk] = await Promise.race([once(socket, 'data'), once(socket, 'end').then(() => [null])])
    if (chunk === null) break
    buffer = Buffer.concat([buffer, chunk])
  }
  const end = buffer.indexOf('\r\n\r\n')
  const head = buffer.subarray(0, end).toString().split('\r\n')
  const status = +head[0].split(' ')[1]
  const headers = Object.fromEntries(head.slice(1).map((l) => [l.split(':')[0].toLowerCase(), l.split(':').slice(1).join(':').trim()]))
  if (status !== 101) {
    let body = buffer.subarray(end + 4)
    socket.on('data', (c) => { body = Buffer.concat([body, c]) })
    await once(socket, 'close')
    return { status, headers, body: body.toString() }
  }
  socket.pause()
  socket.removeAllListeners('data')
  if (end + 4 < buffer.length) socket.unshift(buffer.subarray(end + 4))
  return { socket, status, headers }
}

function connection (socket) {
  const conn = transport.connection.create(socket, { protocol: 'spdy', isServer: false })
  conn.on('error', () => {})
  conn.start(3.1)
  return conn
}

// Open a stream and wait for the server's SYN_REPLY, as kubectl does (spdy-transport sends a SYN_STREAM when
// the stream is first written, so streams opened back to back with data could go out of id order).
async function open (conn, headers) {
  const stream = conn.request({ method: 'POST', path: '/', headers })
  stream.on('error', () => {})
  await Promise.race([once(stream, 'response'), once(stream, 'close')])
  stream.text = ''
  stream.ended = new Promise((resolve) => {
    stream.on('data', (chunk) => { stream.text += chunk.toString('latin1') })
    stream.on('end', resolve)
    stream.on('close', resolve)
  })
  stream.resume()
  return stream
}

async function waitFor (predicate, what) {
  while (!predicate()) {
    if (Date.now() - started > 60000) throw new Error('timed out waiting for ' + what)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

async function remoteCommand (socket, protocol) {
  const conn = connection(socket)
  const streams = {}
  for (const type of scenario.streams) streams[type] = await open(conn, { streamtype: type })
  const output = () => (streams.stdout ? streams.stdout.text : '') + (streams.stderr ? streams.stderr.text : '')
  for (const step of scenario.steps || []) {
    if (step.send !== undefined) streams.stdin.write(step.send)
    if (step.sendBytes !== undefined) {
      const block = Buffer.alloc(65536, 'x')
      for (let sent = 0; sent < step.sendBytes; sent += block.length) {
        if (!streams.stdin.write(block.subarray(0, Math.min(block.length, step.sendBytes - sent)))) {
          await once(streams.stdin, 'drain')
        }
      }
    }
    if (step.wait !== undefined) await waitFor(() => new RegExp(step.wait).test(output()), step.wait)
    if (step.resize) streams.resize.write(JSON.stringify({ Width: step.resize[0], Height: step.resize[1] }))
    if (step.end) streams.stdin.end()
    if (step.disconnect) {
      socket.destroy()
      return { protocol, stdout: streams.stdout && streams.stdout.text, disconnected: true }
    }
  }
  await Promise.race([streams.error.ended, waitFor(() => false, 'the error stream to end')])
  const outputs = ['stdout', 'stderr'].filter((t) => streams[t]).map((t) => streams[t].ended)
  await Promise.race([Promise.all(outputs), new Promise((resolve) => setTimeout(resolve, 5000))])
  const closed = once(socket, 'close')
  conn.end()
  await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, 3000))])
  if (scenario.lengthsOnly) {
    return { protocol, stdoutLength: streams.stdout.text.length, error: streams.error.text }
  }
  return {
    protocol,
    stdout: streams.stdout ? streams.stdout.text : null,
    stderr: streams.stderr ? streams.stderr.text : null,
    error: streams.error.text
  }
}

async function portForward (socket, protocol) {
  const conn = connection(socket)
  const results = await Promise.all(scenario.forward.map(async ({ port, send }, i) => {
    const headers = { port: String(port), requestid: String(i) }
    const error = await open(conn, { ...headers, streamtype: 'error' })
    const data = await open(conn, { ...headers, streamtype: 'data' })
    if (send) data.write(send)
    data.end()
    await Promise.race([data.ended, waitFor(() => false, 'data of request ' + i)])
    await Promise.race([error.ended, new Promise((resolve) => setTimeout(resolve, 5000))])
    return { port, data: data.text, error: error.text }
  }))
  conn.end()
  return { protocol, results }
}

async function main () {
  const up = await upgrade()
  if (up.status !== 101) return { status: up.status, body: up.body }
  const protocol = up.headers['x-stream-protocol-version'] || ''
  const result = scenario.forward ? await portForward(up.socket, protocol) : await remoteCommand(up.socket, protocol)
  return { status: 101, ...result }
}

main().then(
  (result) => { print(result); process.exit(0) },
  (err) => { print({ failure: String(err && err.stack) }); process.exit(1) }
)
