// SPDX-License-Identifier: Apache-2.0
// sandbox.pty through the official SDK (debug mode) against one guestd started with
// --default-user user. Shell input is written so that the terminal's echo of it cannot match
// the expected output (e.g. `echo "S=$(stty size)"` echoes `$(stty size)`, outputs digits).
import { before, after, test } from 'node:test'
import assert from 'node:assert/strict'
import { Sandbox, CommandExitError, NotFoundError } from 'e2b'
import { startGuestd, waitFor, textSink, uniqueId } from './harness.mjs'

let g
let sbx

before(async () => {
  g = await startGuestd(['--default-user', 'user'])
  sbx = await Sandbox.create()
})

after(async () => {
  if (g) assert.equal(await g.stop(), 0, `guestd did not exit cleanly:\n${g.log()}`)
})

const enc = new TextEncoder()
const input = (pid, s) => sbx.pty.sendInput(pid, enc.encode(s))

// Waits until the sink's text matches re; returns the match.
function expectOutput(sink, re, what = String(re)) {
  return waitFor(() => sink.text().match(re), { what: `${what} in PTY output` })
    .catch((e) => { throw new Error(`${e.message}; output so far: ${JSON.stringify(sink.text())}`) })
}

// Asks the shell for its terminal size under a fresh key; returns { rows, cols }.
let sizeQueries = 0
async function querySize(pid, sink) {
  const key = `SZ${++sizeQueries}`
  await input(pid, `echo "${key}=$(stty size)"\n`)
  const m = await expectOutput(sink, new RegExp(`${key}=(\\d+) (\\d+)\\r?\\n`), `${key} size`)
  return { rows: Number(m[1]), cols: Number(m[2]) }
}

// Kills a PTY if it still runs and waits for its handle; for finally blocks.
async function reap(handle) {
  if (!handle) return
  await sbx.pty.kill(handle.pid).catch(() => {})
  await handle.wait().catch(() => {})
}

test('pty.create: stty size matches rows and cols', async () => {
  const sink = textSink()
  const h = await sbx.pty.create({ cols: 80, rows: 24, onData: sink.onData })
  try {
    assert.ok(Number.isInteger(h.pid) && h.pid > 0, `pid ${h.pid}`)
    assert.deepEqual(await querySize(h.pid, sink), { rows: 24, cols: 80 })
  } finally {
    await reap(h)
  }
})

test('pty.create with an unusual size', async () => {
  const sink = textSink()
  const h = await sbx.pty.create({ cols: 211, rows: 7, onData: sink.onData })
  try {
    assert.deepEqual(await querySize(h.pid, sink), { rows: 7, cols: 211 })
  } finally {
    await reap(h)
  }
})

test('sendInput of a command then exit: output arrives and wait() resolves', async () => {
  const sink = textSink()
  const h = await sbx.pty.create({ cols: 80, rows: 24, onData: sink.onData })
  try {
    await input(h.pid, 'echo "R=$((6*7))"\n')
    await expectOutput(sink, /R=42\r?\n/)
    await input(h.pid, 'exit\n')
    const r = await h.wait()
    assert.equal(r.exitCode, 0)
    // PTY output goes to onData only, not to stdout/stderr
    assert.equal(r.stdout, '')
    assert.equal(r.stderr, '')
  } finally {
    await reap(h)
  }
})

test('a command and exit in one input', async () => {
  const sink = textSink()
  const h = await sbx.pty.create({ cols: 80, rows: 24, onData: sink.onData })
  try {
    await input(h.pid, 'echo "ONE=$((100+1))"; exit\n')
    const r = await h.wait()
    assert.equal(r.exitCode, 0)
    assert.match(sink.text(), /ONE=101\r?\n/)
  } finally {
    await reap(h)
  }
})

test('the shell exit code is reported', async () => {
  const h = await sbx.pty.create({ cols: 80, rows: 24, onData: () => {} })
  try {
    await input(h.pid, 'exit 3\n')
    await assert.rejects(h.wait(), (e) => {
      assert.ok(e instanceof CommandExitError, `expected CommandExitError, got ${e}`)
      assert.equal(e.exitCode, 3)
      return true
    })
  } finally {
    await reap(h)
  }
})

test('Ctrl-D at the prompt ends the shell', async () => {
  const sink = textSink()
  const h = await sbx.pty.create({ cols: 80, rows: 24, onData: sink.onData })
  try {
    await input(h.pid, 'echo "READY=$((1+1))"\n')
    await expectOutput(sink, /READY=2\r?\n/)
    await input(h.pid, '\x04')
    const r = await h.wait()
    assert.equal(r.exitCode, 0)
  } finally {
    await reap(h)
  }
})

test('Ctrl-C interrupts the foreground command, the shell survives', async () => {
  const sink = textSink()
  const h = await sbx.pty.create({ cols: 80, rows: 24, onData: sink.onData })
  try {
    await input(h.pid, 'echo "GO=$((3+4))"; sleep 30; echo "SLEPT=$((5+5))"\n')
    await expectOutput(sink, /GO=7\r?\n/)
    await input(h.pid, '\x03')
    await input(h.pid, 'echo "AFTER=$((2+3))"\n')
    await expectOutput(sink, /AFTER=5\r?\n/)
    assert.doesNotMatch(sink.text(), /SLEPT=10/)
  } finally {
    await reap(h)
  }
})

test('pty.resize changes the size seen by stty', async () => {
  const sink = textSink()
  const h = await sbx.pty.create({ cols: 80, rows: 24, onData: sink.onData })
  try {
    assert.deepEqual(await querySize(h.pid, sink), { rows: 24, cols: 80 })
    await sbx.pty.resize(h.pid, { cols: 132, rows: 50 })
    assert.deepEqual(await querySize(h.pid, sink), { rows: 50, cols: 132 })
    await sbx.pty.resize(h.pid, { cols: 40, rows: 10 })
    assert.deepEqual(await querySize(h.pid, sink), { rows: 10, cols: 40 })
  } finally {
    await reap(h)
  }
})

test('pty.kill returns true, ends the PTY with exit code -1 and reaps it', async () => {
  const h = await sbx.pty.create({ cols: 80, rows: 24, onData: () => {} })
  try {
    assert.ok((await sbx.commands.list()).some((p) => p.pid === h.pid), 'pty not listed')
    assert.equal(await sbx.pty.kill(h.pid), true)
    await assert.rejects(h.wait(), (e) => {
      assert.ok(e instanceof CommandExitError, `expected CommandExitError, got ${e}`)
      assert.equal(e.exitCode, -1)
      assert.equal(e.error, 'signal: killed')
      return true
    })
    assert.ok(!(await sbx.commands.list()).some((p) => p.pid === h.pid), 'killed pty still listed')
    const r = await sbx.commands.run(`test -e /proc/${h.pid} && echo alive || echo gone`, { user: 'root' })
    assert.equal(r.stdout, 'gone\n')
    assert.equal(await sbx.pty.kill(h.pid), false)
  } finally {
    await reap(h)
  }
})

test('the handle kill() of a PTY works too', async () => {
  const h = await sbx.pty.create({ cols: 80, rows: 24, onData: () => {} })
  try {
    assert.equal(await h.kill(), true)
    await assert.rejects(h.wait(), (e) => e instanceof CommandExitError && e.exitCode === -1)
  } finally {
    await reap(h)
  }
})

test('pty.connect to a running PTY receives data and the exit', async () => {
  const first = textSink()
  const h = await sbx.pty.create({ cols: 80, rows: 24, onData: first.onData })
  let c
  try {
    await input(h.pid, 'echo "BEFORE=$((8*8))"\n')
    await expectOutput(first, /BEFORE=64\r?\n/)
    await h.disconnect()

    const second = textSink()
    c = await sbx.pty.connect(h.pid, { onData: second.onData })
    assert.equal(c.pid, h.pid)
    await input(h.pid, 'echo "CONNECTED=$((9*9))"\n')
    await expectOutput(second, /CONNECTED=81\r?\n/)
    await input(h.pid, 'exit\n')
    const r = await c.wait()
    assert.equal(r.exitCode, 0)
  } finally {
    await reap(c)
    await reap(h)
  }
})

test('pty.connect while the creating handle is still attached: both receive data', async () => {
  const first = textSink()
  const second = textSink()
  const h = await sbx.pty.create({ cols: 80, rows: 24, onData: first.onData })
  let c
  try {
    c = await sbx.pty.connect(h.pid, { onData: second.onData })
    await input(h.pid, 'echo "BOTH=$((11*11))"\n')
    await expectOutput(first, /BOTH=121\r?\n/)
    await expectOutput(second, /BOTH=121\r?\n/)
    await input(h.pid, 'exit 0\n')
    const [r1, r2] = await Promise.all([h.wait(), c.wait()])
    assert.equal(r1.exitCode, 0)
    assert.equal(r2.exitCode, 0)
  } finally {
    await reap(c)
    await reap(h)
  }
})

test('the PTY is a terminal running a login shell as `user` in /home/user', async () => {
  const sink = textSink()
  const h = await sbx.pty.create({ cols: 80, rows: 24, onData: sink.onData })
  try {
    await input(h.pid, 'echo "I$((40+2))=$(tty)|$(whoami)|$PWD|$TERM|$LANG|$E2B_SANDBOX|$([ -t 0 ] && echo t0)"\n')
    const m = await expectOutput(sink, /I42=([^\r\n]*)\r?\n/)
    assert.match(m[1], /^\/dev\/pts\/\d+\|user\|\/home\/user\|xterm-256color\|C\.UTF-8\|true\|t0$/)
  } finally {
    await reap(h)
  }
})

test('pty.create options: envs, cwd and user', async () => {
  const sink = textSink()
  const mark = uniqueId('ptyenv')
  const h = await sbx.pty.create({
    cols: 80, rows: 24, onData: sink.onData, envs: { PTY_MARK: mark, TERM: 'dumb' }, cwd: '/tmp', user: 'root',
  })
  try {
    await input(h.pid, 'echo "O$((40+2))=$PTY_MARK|$TERM|$(whoami)|$PWD"\n')
    const m = await expectOutput(sink, /O42=([^\r\n]*)\r?\n/)
    assert.equal(m[1], `${mark}|dumb|root|/tmp`)
  } finally {
    await reap(h)
  }
})

test('commands.list() shows a PTY with its shell arguments and terminal envs', async () => {
  const h = await sbx.pty.create({ cols: 80, rows: 24, onData: () => {} })
  try {
    const p = (await sbx.commands.list()).find((x) => x.pid === h.pid)
    assert.ok(p, 'pty not listed')
    assert.equal(p.cmd, '/bin/bash')
    assert.deepEqual(p.args, ['-i', '-l'])
    assert.deepEqual(p.envs, { TERM: 'xterm-256color', LANG: 'C.UTF-8', LC_ALL: 'C.UTF-8' })
  } finally {
    await reap(h)
  }
})

test('UTF-8 and a large output come through the PTY intact', async () => {
  const sink = textSink()
  // wide enough that the echoed input line does not wrap
  const h = await sbx.pty.create({ cols: 200, rows: 24, onData: sink.onData })
  try {
    // octal escapes: the echoed input is ASCII, the output is ✓
    await input(h.pid, "printf 'U=\\342\\234\\223\\n'; seq 1 20000; echo \"END=$((1+2))\"\n")
    await expectOutput(sink, /END=3\r?\n/)
    assert.match(sink.text(), /U=✓\r?\n/)
    const out = sink.text()
    const start = out.indexOf('\n1\r\n')
    assert.ok(start >= 0, 'seq output not found')
    let expected = ''
    for (let i = 1; i <= 20000; i++) expected += `${i}\r\n`
    assert.equal(out.slice(start + 1, start + 1 + expected.length), expected)
  } finally {
    await reap(h)
  }
})

test('PTY calls on an unknown pid: NotFoundError / false', async () => {
  await assert.rejects(sbx.pty.sendInput(999999999, enc.encode('x')), NotFoundError)
  await assert.rejects(sbx.pty.resize(999999999, { cols: 10, rows: 10 }), NotFoundError)
  await assert.rejects(sbx.pty.connect(999999999, { onData: () => {} }), NotFoundError)
  assert.equal(await sbx.pty.kill(999999999), false)
})
