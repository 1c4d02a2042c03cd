// SPDX-License-Identifier: Apache-2.0
// Starts the built guestd for SDK tests and points the e2b SDK (debug mode) at it.
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync, existsSync } from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))
export const GUESTD = process.env.GUESTD_BIN || path.join(here, '..', '..', 'build', 'agent', 'guestd')

// How long guestd may take to start (generous on a shared CI machine).
const START_TIMEOUT_MS = 20000

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer()
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address()
      s.close(() => resolve(port))
    })
    s.on('error', reject)
  })
}

function canConnect(port) {
  return new Promise((resolve) => {
    const c = net.connect(port, '127.0.0.1')
    c.on('connect', () => { c.destroy(); resolve(true) })
    c.on('error', () => resolve(false))
  })
}

// Starts guestd and sets E2B_DEBUG / E2B_SANDBOX_URL for the SDK. Returns { url, stop }.
export async function startGuestd(extraArgs = []) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'guestd-sdk-'))
  const port = await freePort()
  const conf = path.join(dir, 'guestd.conf')
  writeFileSync(conf, '# empty\n')
  const args = ['--listen', `tcp:127.0.0.1:${port}`, '--listen', `unix:${path.join(dir, 'g.sock')}`,
    '--run-dir', path.join(dir, 'run'), '--config', conf, ...extraArgs]
  const child = spawn(GUESTD, args, { stdio: ['ignore', 'pipe', 'pipe'] })
  let log = ''
  child.stdout.on('data', (d) => { log += d })
  child.stderr.on('data', (d) => { log += d })
  let exited = null
  child.on('exit', (code) => { exited = code })
  const deadline = Date.now() + START_TIMEOUT_MS
  while (!(await canConnect(port))) {
    if (exited !== null) throw new Error(`guestd exited with ${exited}:\n${log}`)
    if (Date.now() > deadline) throw new Error(`guestd did not start:\n${log}`)
    await new Promise((r) => setTimeout(r, 20))
  }
  const url = `http://127.0.0.1:${port}`
  process.env.E2B_DEBUG = 'true'
  process.env.E2B_SANDBOX_URL = url
  return {
    url,
    port,
    log: () => log,
    stop: async () => {
      if (exited === null) {
        const done = new Promise((r) => child.on('exit', r))
        child.kill('SIGTERM')
        await done
      }
      if (existsSync(dir)) rmSync(dir, { recursive: true, force: true })
      return exited
    },
  }
}

// Polls fn() until it returns a truthy value (returned) or timeoutMs passes (throws, naming
// `what`). fn may be async; errors it throws propagate. For "eventually" checks, not timing.
export async function waitFor(fn, { timeoutMs = 20000, intervalMs = 25, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = await fn()
    if (v) return v
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise((r) => setTimeout(r, intervalMs))
  }
}

// Collects byte chunks (e.g. PTY onData) as UTF-8 text: { onData, text() }.
export function textSink() {
  const dec = new TextDecoder()
  let s = ''
  return {
    onData: (d) => { s += dec.decode(d, { stream: true }) },
    text: () => s,
  }
}

// A string unlikely to collide between tests or runs (for markers, file names, commands).
export function uniqueId(prefix = 'id') {
  return `${prefix}_${process.pid}_${Date.now().toString(36)}_${Math.random().toString(36).slice(2, 8)}`
}
