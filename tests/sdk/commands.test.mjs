// SPDX-License-Identifier: Apache-2.0
// sandbox.commands through the official SDK (debug mode) against one guestd started with
// --default-user user, as the upstream SDK tests expect.
import { before, after, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import {
  Sandbox, CommandExitError, TimeoutError, NotFoundError, InvalidArgumentError, SandboxError,
} from 'e2b'
import { startGuestd, waitFor, uniqueId } from './harness.mjs'

let g
let sbx

before(async () => {
  g = await startGuestd(['--default-user', 'user'])
  sbx = await Sandbox.create()
})

after(async () => {
  if (g) assert.equal(await g.stop(), 0, `guestd did not exit cleanly:\n${g.log()}`)
})

// Whether a process with this pid exists at all (zombies count: they must have been reaped).
async function exists(pid) {
  const r = await sbx.commands.run(`if test -e /proc/${pid}; then echo alive; else echo gone; fi`,
    { user: 'root' })
  return r.stdout.trim() === 'alive'
}

async function listed(pid) {
  return (await sbx.commands.list()).find((p) => p.pid === pid)
}

// Kills a background handle if it is still running; for finally blocks.
async function reap(handle) {
  if (!handle) return
  await handle.kill().catch(() => {})
  await handle.wait().catch(() => {})
}

// Expected text of `seq 1 n`.
function seqText(n) {
  let s = ''
  for (let i = 1; i <= n; i++) s += `${i}\n`
  return s
}

describe('commands.run in the foreground', () => {
  test('stdout is exact, stderr empty, exit code 0', async () => {
    const r = await sbx.commands.run('echo hello')
    assert.equal(r.stdout, 'hello\n')
    assert.equal(r.stderr, '')
    assert.equal(r.exitCode, 0)
    assert.equal(r.error, undefined)
  })

  test('stdout and stderr are kept apart', async () => {
    const r = await sbx.commands.run('echo out; echo err >&2; printf "no newline"; printf "e2" >&2')
    assert.equal(r.stdout, 'out\nno newline')
    assert.equal(r.stderr, 'err\ne2')
    assert.equal(r.exitCode, 0)
  })

  test('runs as user `user` in /home/user by default', async () => {
    const r = await sbx.commands.run('whoami; pwd; echo "$HOME"; echo "$USER"; id -un')
    assert.equal(r.stdout, 'user\n/home/user\n/home/user\nuser\nuser\n')
  })

  test('the cwd option sets the working directory', async () => {
    assert.equal((await sbx.commands.run('pwd', { cwd: '/tmp' })).stdout, '/tmp\n')
    assert.equal((await sbx.commands.run('pwd', { cwd: '/' })).stdout, '/\n')
  })

  test('a cwd that does not exist is rejected without running the command', async () => {
    const dir = `/nonexistent-${uniqueId('cwd')}`
    await assert.rejects(sbx.commands.run('echo ran', { cwd: dir }), (err) => {
      assert.ok(err instanceof InvalidArgumentError, `expected InvalidArgumentError, got ${err}`)
      assert.ok(err.message.includes(dir), err.message)
      return true
    })
  })

  test('the envs option is visible to the command', async () => {
    const r = await sbx.commands.run('echo "$FOO|$WITH_SPACE|$EMPTY_ONE|${EMPTY_ONE+set}"', {
      envs: { FOO: 'bar', WITH_SPACE: 'a b  c', EMPTY_ONE: '' },
    })
    assert.equal(r.stdout, 'bar|a b  c||set\n')
  })

  test('request envs override the defaults', async () => {
    const r = await sbx.commands.run('echo "$HOME"', { envs: { HOME: '/tmp' } })
    assert.equal(r.stdout, '/tmp\n')
  })

  test('E2B_SANDBOX is "true" in commands', async () => {
    assert.equal((await sbx.commands.run('echo "$E2B_SANDBOX"')).stdout, 'true\n')
    assert.equal((await sbx.commands.run('printenv E2B_SANDBOX', { user: 'root' })).stdout, 'true\n')
  })

  test('user: root runs the command as root in /root', async () => {
    const r = await sbx.commands.run('whoami; id -u; pwd; echo "$HOME"', { user: 'root' })
    assert.equal(r.stdout, 'root\n0\n/root\n/root\n')
    // and the default is still `user` afterwards
    assert.equal((await sbx.commands.run('whoami')).stdout, 'user\n')
  })

  test('a short timeoutMs rejects with TimeoutError and the command is stopped', async () => {
    const tag = uniqueId('timeout')
    await assert.rejects(sbx.commands.run(`sleep 10; echo ${tag}`, { timeoutMs: 1000 }), (err) => {
      assert.ok(err instanceof TimeoutError, `expected TimeoutError, got ${err?.name}: ${err?.message}`)
      assert.ok(!(err instanceof CommandExitError))
      return true
    })
    // guestd kills the process at the deadline: it leaves the process list.
    await waitFor(async () => !(await sbx.commands.list()).some((p) => p.args.join(' ').includes(tag)),
      { what: 'the timed-out command to leave commands.list()' })
  })

  test('timeoutMs longer than the command does not interfere', async () => {
    const r = await sbx.commands.run('sleep 0.2; echo done', { timeoutMs: 30000 })
    assert.equal(r.stdout, 'done\n')
  })

  test('a non-zero exit rejects with CommandExitError carrying exitCode, stdout, stderr', async () => {
    await assert.rejects(sbx.commands.run('echo partial; echo oops >&2; exit 3'), (err) => {
      assert.ok(err instanceof CommandExitError, `expected CommandExitError, got ${err?.name}`)
      assert.equal(err.exitCode, 3)
      assert.equal(err.stdout, 'partial\n')
      assert.equal(err.stderr, 'oops\n')
      assert.equal(err.error, 'exit status 3')
      return true
    })
  })

  test('a command that does not exist exits 127 with a message on stderr', async () => {
    const name = uniqueId('nosuchcommand')
    await assert.rejects(sbx.commands.run(name), (err) => {
      assert.ok(err instanceof CommandExitError)
      assert.equal(err.exitCode, 127)
      assert.equal(err.stdout, '')
      assert.match(err.stderr, new RegExp(name))
      return true
    })
  })

  test('onStdout receives all of a large output, equal to result.stdout', async () => {
    const chunks = []
    const r = await sbx.commands.run('seq 1 100000', { onStdout: (d) => { chunks.push(d) } })
    const expected = seqText(100000)
    assert.equal(chunks.join(''), expected)
    assert.equal(r.stdout, expected)
    assert.equal(r.stderr, '')
  })

  test('onStderr receives all of a large stderr output, equal to result.stderr', async () => {
    const out = []
    const err = []
    const r = await sbx.commands.run('seq 1 50000 >&2; echo end', {
      onStdout: (d) => { out.push(d) },
      onStderr: (d) => { err.push(d) },
    })
    const expected = seqText(50000)
    assert.equal(err.join(''), expected)
    assert.equal(r.stderr, expected)
    assert.equal(out.join(''), 'end\n')
    assert.equal(r.stdout, 'end\n')
  })

  test('interleaved stdout and stderr both arrive complete', async () => {
    const out = []
    const err = []
    const r = await sbx.commands.run('for i in $(seq 1 2000); do echo "o$i"; echo "e$i" >&2; done', {
      onStdout: (d) => { out.push(d) },
      onStderr: (d) => { err.push(d) },
    })
    let eo = ''
    let ee = ''
    for (let i = 1; i <= 2000; i++) { eo += `o${i}\n`; ee += `e${i}\n` }
    assert.equal(out.join(''), eo)
    assert.equal(err.join(''), ee)
    assert.equal(r.stdout, eo)
    assert.equal(r.stderr, ee)
  })

  test('multi-byte UTF-8 output is decoded intact', async () => {
    const text = 'héllo wörld ✓ 日本語 🚀'
    const r = await sbx.commands.run(`for i in $(seq 1 3000); do echo '${text}'; done`)
    assert.equal(r.stdout, `${text}\n`.repeat(3000))
  })

  test('stdin is not open by default (reads see EOF)', async () => {
    const r = await sbx.commands.run('cat; echo "rc=$?"', { timeoutMs: 20000 })
    assert.equal(r.stdout, 'rc=0\n')
  })

  test('concurrent commands each get their own output', async () => {
    const rs = await Promise.all([...Array(8).keys()].map((i) =>
      sbx.commands.run(`for j in 1 2 3; do echo "${i}-$j"; done`)))
    rs.forEach((r, i) => assert.equal(r.stdout, `${i}-1\n${i}-2\n${i}-3\n`))
  })
})

describe('commands.run in the background', () => {
  test('returns a handle with a pid; wait() gives the result', async () => {
    const h = await sbx.commands.run('sleep 0.3; echo bg-out; echo bg-err >&2', { background: true })
    try {
      assert.ok(Number.isInteger(h.pid) && h.pid > 0, `pid ${h.pid}`)
      const r = await h.wait()
      assert.equal(r.exitCode, 0)
      assert.equal(r.stdout, 'bg-out\n')
      assert.equal(r.stderr, 'bg-err\n')
      assert.equal(h.exitCode, 0)
      assert.equal(h.stdout, 'bg-out\n')
    } finally {
      await reap(h)
    }
  })

  test('wait() of a failing background command rejects with CommandExitError', async () => {
    const h = await sbx.commands.run('echo x; exit 7', { background: true })
    try {
      await assert.rejects(h.wait(), (err) => {
        assert.ok(err instanceof CommandExitError)
        assert.equal(err.exitCode, 7)
        assert.equal(err.stdout, 'x\n')
        return true
      })
      assert.equal(h.exitCode, 7)
    } finally {
      await reap(h)
    }
  })

  test('commands.list() includes a running command and not a finished one', async () => {
    const marker = uniqueId('list')
    const cmd = `sleep 30 # ${marker}`
    const h = await sbx.commands.run(cmd, { background: true, envs: { LIST_MARK: marker } })
    try {
      const p = await listed(h.pid)
      assert.ok(p, `pid ${h.pid} not in commands.list()`)
      assert.equal(p.cmd, '/bin/bash')
      assert.deepEqual(p.args, ['-l', '-c', cmd])
      assert.equal(p.tag, undefined)
      assert.deepEqual(p.envs, { LIST_MARK: marker })
      assert.equal(p.cwd, undefined)

      assert.equal(await h.kill(), true)
      await assert.rejects(h.wait(), CommandExitError)
      assert.equal(await listed(h.pid), undefined, 'killed command still in commands.list()')
    } finally {
      await reap(h)
    }

    // a command that finished on its own is not listed either
    const done = await sbx.commands.run('echo quick', { background: true })
    await done.wait()
    assert.equal(await listed(done.pid), undefined, 'finished command still in commands.list()')
  })

  test('commands.list() reports the request cwd', async () => {
    const h = await sbx.commands.run('sleep 30', { background: true, cwd: '/tmp' })
    try {
      const p = await listed(h.pid)
      assert.ok(p)
      assert.equal(p.cwd, '/tmp')
    } finally {
      await reap(h)
    }
  })

  test('handle.kill() returns true, ends the command with exit code -1 and reaps it', async () => {
    const h = await sbx.commands.run('sleep 30', { background: true })
    try {
      assert.equal(await exists(h.pid), true)
      assert.equal(await h.kill(), true)
      await assert.rejects(h.wait(), (err) => {
        assert.ok(err instanceof CommandExitError)
        assert.equal(err.exitCode, -1)
        assert.equal(err.error, 'signal: killed')
        return true
      })
      assert.equal(await exists(h.pid), false, `pid ${h.pid} still exists after kill`)
      // killing it again: it is gone
      assert.equal(await h.kill(), false)
    } finally {
      await reap(h)
    }
  })

  test('commands.kill(pid) returns true and the process is gone', async () => {
    const h = await sbx.commands.run('sleep 30', { background: true })
    try {
      assert.equal(await sbx.commands.kill(h.pid), true)
      await waitFor(async () => !(await exists(h.pid)), { what: `pid ${h.pid} to disappear` })
      await waitFor(async () => !(await listed(h.pid)), { what: `pid ${h.pid} to leave the list` })
      await assert.rejects(h.wait(), CommandExitError)
    } finally {
      await reap(h)
    }
  })

  test('commands.kill of an unknown pid returns false', async () => {
    assert.equal(await sbx.commands.kill(999999999), false)
  })

  test('commands.kill of a command that already exited returns false', async () => {
    const h = await sbx.commands.run('true', { background: true })
    await h.wait()
    assert.equal(await sbx.commands.kill(h.pid), false)
  })

  test('kill also ends a command whose children keep the output open', async () => {
    // the background sleep inherits stdout; killing the shell must still deliver the end event
    const h = await sbx.commands.run('sleep 30 & echo "$!"; wait', { background: true })
    let child
    try {
      child = Number(await waitFor(() => h.stdout.match(/^(\d+)\n/)?.[1], { what: 'child pid' }))
      assert.equal(await h.kill(), true)
      await assert.rejects(h.wait(), (e) => e instanceof CommandExitError && e.exitCode === -1)
    } finally {
      await reap(h)
      if (child) await sbx.commands.run(`kill ${child} 2>/dev/null; true`).catch(() => {})
    }
  })

  test('commands.connect(pid) receives later output and the exit', async () => {
    const trigger = `/tmp/${uniqueId('trigger')}`
    const cmd = `echo early; while [ ! -e ${trigger} ]; do sleep 0.05; done; echo later; echo later-err >&2; exit 5`
    const h = await sbx.commands.run(cmd, { background: true })
    let c
    try {
      await waitFor(() => h.stdout.includes('early\n'), { what: 'early output' })
      await h.disconnect()
      const out = []
      const err = []
      c = await sbx.commands.connect(h.pid, {
        onStdout: (d) => { out.push(d) },
        onStderr: (d) => { err.push(d) },
      })
      assert.equal(c.pid, h.pid)
      await sbx.commands.run(`touch ${trigger}`)
      await assert.rejects(c.wait(), (e) => {
        assert.ok(e instanceof CommandExitError, `expected CommandExitError, got ${e}`)
        assert.equal(e.exitCode, 5)
        assert.ok(e.stdout.endsWith('later\n'), `connected stdout: ${JSON.stringify(e.stdout)}`)
        assert.ok(e.stderr.endsWith('later-err\n'), `connected stderr: ${JSON.stringify(e.stderr)}`)
        return true
      })
      assert.ok(out.join('').endsWith('later\n'))
      assert.ok(err.join('').endsWith('later-err\n'))
      assert.equal(c.exitCode, 5)
    } finally {
      await reap(c)
      await reap(h)
      await sbx.commands.run(`rm -f ${trigger}`).catch(() => {})
    }
  })

  test('a second connection and the original handle both see the output', async () => {
    const trigger = `/tmp/${uniqueId('trigger')}`
    const h = await sbx.commands.run(
      `while [ ! -e ${trigger} ]; do sleep 0.05; done; echo both`, { background: true })
    let c
    try {
      c = await sbx.commands.connect(h.pid)
      await sbx.commands.run(`touch ${trigger}`)
      const [r1, r2] = await Promise.all([h.wait(), c.wait()])
      assert.equal(r1.stdout, 'both\n')
      assert.equal(r2.stdout, 'both\n')
      assert.equal(r1.exitCode, 0)
      assert.equal(r2.exitCode, 0)
    } finally {
      await reap(c)
      await reap(h)
      await sbx.commands.run(`rm -f ${trigger}`).catch(() => {})
    }
  })

  test('commands.connect to a command that just exited reports its exit', async () => {
    const h = await sbx.commands.run('echo x; exit 4', { background: true })
    await assert.rejects(h.wait(), CommandExitError)
    const c = await sbx.commands.connect(h.pid)
    await assert.rejects(c.wait(), (e) => {
      assert.ok(e instanceof CommandExitError, `expected CommandExitError, got ${e}`)
      assert.equal(e.exitCode, 4)
      return true
    })
  })

  test('commands.connect of an unknown pid rejects with NotFoundError', async () => {
    await assert.rejects(sbx.commands.connect(999999999), NotFoundError)
  })

  test('connect then kill through the connected handle', async () => {
    const h = await sbx.commands.run('sleep 30', { background: true })
    let c
    try {
      c = await sbx.commands.connect(h.pid)
      assert.equal(await c.kill(), true)
      await assert.rejects(c.wait(), (e) => e instanceof CommandExitError && e.exitCode === -1)
      await assert.rejects(h.wait(), (e) => e instanceof CommandExitError && e.exitCode === -1)
    } finally {
      await reap(c)
      await reap(h)
    }
  })

  test('sendStdin and closeStdin with stdin: true', async () => {
    const out = []
    const h = await sbx.commands.run('cat; echo "[eof]"', {
      background: true, stdin: true, onStdout: (d) => { out.push(d) },
    })
    try {
      await h.sendStdin('hello\n')
      await waitFor(() => out.join('') === 'hello\n', { what: 'echo of the first stdin line' })
      await sbx.commands.sendStdin(h.pid, 'world ✓\n')
      await h.sendStdin(new TextEncoder().encode('bytes'))
      await h.closeStdin()
      const r = await h.wait()
      assert.equal(r.stdout, 'hello\nworld ✓\nbytes[eof]\n')
      assert.equal(out.join(''), r.stdout)
    } finally {
      await reap(h)
    }
  })

  test('commands.closeStdin(pid) delivers EOF', async () => {
    const h = await sbx.commands.run('wc -c', { background: true, stdin: true })
    try {
      await sbx.commands.sendStdin(h.pid, 'x'.repeat(100000))
      await sbx.commands.closeStdin(h.pid)
      const r = await h.wait()
      assert.equal(r.stdout.trim(), '100000')
    } finally {
      await reap(h)
    }
  })

  test('sendStdin to a command started without stdin: true fails', async () => {
    const h = await sbx.commands.run('sleep 30', { background: true })
    try {
      await assert.rejects(h.sendStdin('data\n'), SandboxError)
    } finally {
      await reap(h)
    }
  })

  test('sendStdin to an unknown pid rejects with NotFoundError', async () => {
    await assert.rejects(sbx.commands.sendStdin(999999999, 'x'), NotFoundError)
  })
})
