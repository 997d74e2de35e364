'use strict'
// A CRI streaming client on npm's ws (a WebSocket implementation crirt did not write), speaking the k8s channel
// protocols (v5/v4 channel.k8s.io, the base64 variants) or the kubelet's WebSocket port-forward.
// Usage: node stream_ws.js URL SCENARIO_JSON. Prints one JSON result line.
//
// Scenario: {"protocols": [...], "steps": [...]}; steps as in stream_spdy.js: {"send": text}, {"wait": regex},
// {"resize": [w, h]}, {"end": true} (v5 only: a close message for stdin), {"disconnect": true}.
// Port-forward: {"protocols": [...], "forward": true, "send": [text per port]}.
// The result has the negotiated protocol, per-channel text, the close code, or the refused handshake's status.

const WebSocket = require('ws')

const [url, scenarioText] = process.argv.slice(2)
const scenario = JSON.parse(scenarioText)
const started = Date.now()

function print (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

async function waitFor (predicate, what) {
  while (!predicate()) {
    if (Date.now() - started > 60000) throw new Error('timed out waiting for ' + what)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

async function main () {
  const ws = new WebSocket(url, scenario.protocols || [])
  const channels = {}
  const firsts = []
  let closeCode = null
  let base64 = false
  const opened = new Promise((resolve, reject) => {
    ws.on('open', resolve)
    ws.on('unexpected-response', (req, res) => {
      let body = ''
      res.on('data', (c) => { body += c })
      res.on('end', () => resolve({ status: res.statusCode, body }))
    })
    ws.on('error', reject)
  })
  const closed = new Promise((resolve) => ws.on('close', (code) => { closeCode = code; resolve() }))
  ws.on('message', (message, isBinary) => {
    let channel, payload
    if (isBinary) {
      channel = message[0]
      payload = message.subarray(1)
    } else {
      const text = message.toString()
      channel = +text[0]
      payload = Buffer.from(text.slice(1), 'base64')
    }
    if (!(channel in channels)) {
      firsts.push({ channel, length: payload.length, hex: payload.toString('hex') })
      channels[channel] = ''
      if (scenario.forward) return // the first message of a port-forward channel is its port
    }
    channels[channel] += payload.toString('latin1')
  })
  const refused = await opened
  if (refused) return refused
  base64 = ws.protocol.includes('base64')
  const send = (channel, data) => {
    const bytes = Buffer.from(data)
    if (base64) ws.send(String(channel) + bytes.toString('base64'))
    else ws.send(Buffer.concat([Buffer.from([channel]), bytes]))
  }
  if (scenario.forward) {
    await waitFor(() => firsts.length >= 2 * scenario.send.length, 'the port messages')
    scenario.send.forEach((text, i) => send(2 * i, text))
  }
  const output = () => (channels[1] || '') + (channels[2] || '')
  for (const step of scenario.steps || []) {
    if (step.send !== undefined) send(0, step.send)
    if (step.wait !== undefined) await waitFor(() => new RegExp(step.wait).test(output()), step.wait)
    if (step.resize) send(4, JSON.stringify({ Width: step.resize[0], Height: step.resize[1] }))
    if (step.end) send(255, [0])
    if (step.disconnect) {
      ws._socket.destroy()
      return { protocol: ws.protocol, channels, disconnected: true }
    }
  }
  await Promise.race([closed, waitFor(() => false, 'the server to close')])
  return { status: 101, protocol: ws.protocol, channels, firsts, closeCode }
}

main().then(
  (result) => { print(result); process.exit(0) },
  (err) => { print({ failure: String(err && err.stack) }); process.exit(1) }
)
