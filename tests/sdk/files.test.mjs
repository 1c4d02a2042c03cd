// SPDX-License-Identifier: Apache-2.0
// sandbox.files (and uploadUrl/downloadUrl) through the official SDK (debug mode) against one
// guestd started with --default-user user, as the upstream SDK tests expect.
import { before, after, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { Sandbox, FileNotFoundError, FileType, FilesystemEventType } from 'e2b'
import { startGuestd, waitFor, uniqueId } from './harness.mjs'

let g
let sbx

before(async () => {
  g = await startGuestd(['--default-user', 'user'])
  sbx = await Sandbox.create()
})

after(async () => {
  // Leave /home/user as found (best effort: a failure here must not hide the real one).
  if (sbx) for (const d of created) await sbx.files.remove(d).catch(() => {})
  if (g) assert.equal(await g.stop(), 0, `guestd did not exit cleanly:\n${g.log()}`)
})

// A fresh, not yet existing directory path under the user's home for one test (removed in after).
const created = new Set()
function scratch(prefix = 'files') {
  const d = `/home/user/${uniqueId(prefix)}`
  created.add(d)
  return d
}

// Reads a ReadableStream<Uint8Array> to the end into one Uint8Array.
async function drain(stream) {
  const chunks = []
  for await (const c of stream) chunks.push(c)
  return new Uint8Array(Buffer.concat(chunks.map((c) => Buffer.from(c))))
}

describe('write and read', () => {
  test('text round trip; write returns the path and name', async () => {
    const dir = scratch()
    const p = `${dir}/hello.txt`
    const info = await sbx.files.write(p, 'hello world\n')
    assert.equal(info.path, p)
    assert.equal(info.name, 'hello.txt')
    assert.equal(await sbx.files.read(p), 'hello world\n')
    assert.equal(await sbx.files.read(p, { format: 'text' }), 'hello world\n')
  })

  test('bytes and stream formats return the exact bytes', async () => {
    const dir = scratch()
    const p = `${dir}/bin.dat`
    const data = new Uint8Array([0, 1, 2, 255, 254, 10, 13, 0, 128])
    await sbx.files.write(p, data.buffer)
    const bytes = await sbx.files.read(p, { format: 'bytes' })
    assert.ok(bytes instanceof Uint8Array)
    assert.deepEqual(Array.from(bytes), Array.from(data))
    const stream = await sbx.files.read(p, { format: 'stream' })
    assert.deepEqual(Array.from(await drain(stream)), Array.from(data))
    const blob = await sbx.files.read(p, { format: 'blob' })
    assert.deepEqual(Array.from(new Uint8Array(await blob.arrayBuffer())), Array.from(data))
  })

  test('Blob and ReadableStream data are written as given', async () => {
    const dir = scratch()
    await sbx.files.write(`${dir}/blob.txt`, new Blob(['from ', 'a blob']))
    assert.equal(await sbx.files.read(`${dir}/blob.txt`), 'from a blob')
    const enc = new TextEncoder()
    const body = new ReadableStream({
      start(c) {
        c.enqueue(enc.encode('streamed '))
        c.enqueue(enc.encode('in chunks'))
        c.close()
      },
    })
    const info = await sbx.files.write(`${dir}/sub/stream.txt`, body)
    assert.equal(info.path, `${dir}/sub/stream.txt`)
    assert.equal(await sbx.files.read(`${dir}/sub/stream.txt`), 'streamed in chunks')
  })

  test('overwriting replaces the whole content', async () => {
    const p = `${scratch()}/over.txt`
    await sbx.files.write(p, 'a much longer first content\n')
    await sbx.files.write(p, 'short')
    assert.equal(await sbx.files.read(p), 'short')
  })

  test('an empty file reads as empty text and empty bytes', async () => {
    const p = `${scratch()}/empty.txt`
    await sbx.files.write(p, '')
    assert.equal(await sbx.files.read(p), '')
    const bytes = await sbx.files.read(p, { format: 'bytes' })
    assert.equal(bytes.length, 0)
    assert.equal((await sbx.files.getInfo(p)).size, 0)
  })

  test('write creates missing parent directories', async () => {
    const dir = scratch()
    const p = `${dir}/a/b/c/deep.txt`
    await sbx.files.write(p, 'deep')
    assert.equal(await sbx.files.read(p), 'deep')
    const info = await sbx.files.getInfo(`${dir}/a/b`)
    assert.equal(info.type, FileType.DIR)
    assert.equal(info.permissions, 'drwxr-xr-x')
    assert.equal(info.owner, 'user')
    assert.equal(info.group, 'user')
  })

  test('several files at once (array form)', async () => {
    const dir = scratch()
    const files = [
      { path: `${dir}/one.txt`, data: 'one' },
      { path: `${dir}/sub/two.txt`, data: 'two' },
      { path: `${dir}/three.bin`, data: new Uint8Array([3, 3, 3]).buffer },
    ]
    const infos = await sbx.files.write(files)
    assert.ok(Array.isArray(infos))
    assert.equal(infos.length, 3)
    assert.deepEqual(infos.map((i) => i.path).sort(), files.map((f) => f.path).sort())
    assert.equal(await sbx.files.read(`${dir}/one.txt`), 'one')
    assert.equal(await sbx.files.read(`${dir}/sub/two.txt`), 'two')
    assert.deepEqual(Array.from(await sbx.files.read(`${dir}/three.bin`, { format: 'bytes' })), [3, 3, 3])
  })

  test('relative paths resolve against the user home', async () => {
    const name = `${uniqueId('rel')}.txt`
    await sbx.files.write(name, 'relative')
    assert.equal(await sbx.files.read(`/home/user/${name}`), 'relative')
    assert.equal(await sbx.files.read(name), 'relative')
    await sbx.files.remove(name)
  })

  test('reading a missing file throws FileNotFoundError', async () => {
    const p = `${scratch()}/missing.txt`
    await assert.rejects(sbx.files.read(p), (err) => {
      assert.ok(err instanceof FileNotFoundError, `expected FileNotFoundError, got ${err}`)
      return true
    })
  })

  test('getInfo of a missing path throws FileNotFoundError', async () => {
    await assert.rejects(sbx.files.getInfo(`${scratch()}/nope`), (err) => {
      assert.ok(err instanceof FileNotFoundError, `expected FileNotFoundError, got ${err}`)
      return true
    })
  })

  test('5 MiB binary round trip is byte for byte identical', async () => {
    const p = `${scratch()}/big.bin`
    const data = randomBytes(5 * 1024 * 1024)
    const ab = data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength)
    await sbx.files.write(p, ab)
    assert.equal((await sbx.files.getInfo(p)).size, data.length)
    const back = await sbx.files.read(p, { format: 'bytes' })
    assert.equal(back.length, data.length)
    assert.ok(Buffer.from(back.buffer, back.byteOffset, back.byteLength).equals(data),
      'content differs')
    const streamed = await drain(await sbx.files.read(p, { format: 'stream' }))
    assert.ok(Buffer.from(streamed).equals(data), 'streamed content differs')
  })

  test('UTF-8 and spaces in names and content', async () => {
    const dir = `${scratch()}/dír with späces`
    const p = `${dir}/ñame 日本語 ✓.txt`
    const content = 'héllo wörld — 日本語 🎉\n'
    const info = await sbx.files.write(p, content)
    assert.equal(info.path, p)
    assert.equal(info.name, 'ñame 日本語 ✓.txt')
    assert.equal(await sbx.files.read(p), content)
    assert.equal(await sbx.files.exists(p), true)
    const gi = await sbx.files.getInfo(p)
    assert.equal(gi.name, 'ñame 日本語 ✓.txt')
    assert.equal(gi.size, Buffer.byteLength(content))
    const entries = await sbx.files.list(dir)
    assert.deepEqual(entries.map((e) => e.name), ['ñame 日本語 ✓.txt'])
    assert.equal(entries[0].path, p)
  })
})

describe('list, exists, getInfo', () => {
  test('list returns entries sorted with types and paths', async () => {
    const dir = scratch()
    await sbx.files.write([
      { path: `${dir}/b.txt`, data: 'b' },
      { path: `${dir}/a.txt`, data: 'a' },
      { path: `${dir}/c/inner.txt`, data: 'inner' },
    ])
    const entries = await sbx.files.list(dir)
    assert.deepEqual(entries.map((e) => e.name), ['a.txt', 'b.txt', 'c'])
    assert.deepEqual(entries.map((e) => e.type), [FileType.FILE, FileType.FILE, FileType.DIR])
    assert.deepEqual(entries.map((e) => e.path), [`${dir}/a.txt`, `${dir}/b.txt`, `${dir}/c`])
    assert.equal(entries[0].size, 1)
  })

  test('list depth option walks nested levels in pre-order', async () => {
    const dir = scratch()
    await sbx.files.write([
      { path: `${dir}/x/y/z/deep.txt`, data: 'z' },
      { path: `${dir}/x/file.txt`, data: 'f' },
      { path: `${dir}/top.txt`, data: 't' },
    ])
    const d1 = await sbx.files.list(dir)
    assert.deepEqual(d1.map((e) => e.path), [`${dir}/top.txt`, `${dir}/x`])
    const d2 = await sbx.files.list(dir, { depth: 2 })
    assert.deepEqual(d2.map((e) => e.path),
      [`${dir}/top.txt`, `${dir}/x`, `${dir}/x/file.txt`, `${dir}/x/y`])
    const d4 = await sbx.files.list(dir, { depth: 4 })
    assert.deepEqual(d4.map((e) => e.path), [
      `${dir}/top.txt`, `${dir}/x`, `${dir}/x/file.txt`, `${dir}/x/y`, `${dir}/x/y/z`,
      `${dir}/x/y/z/deep.txt`,
    ])
    assert.deepEqual(d4.map((e) => e.name), ['top.txt', 'x', 'file.txt', 'y', 'z', 'deep.txt'])
  })

  test('list of an empty directory is empty; of a missing one rejects', async () => {
    const dir = scratch()
    assert.equal(await sbx.files.makeDir(dir), true)
    assert.deepEqual(await sbx.files.list(dir), [])
    await assert.rejects(sbx.files.list(`${dir}/missing`))
  })

  test('exists is true for files and directories, false otherwise', async () => {
    const dir = scratch()
    await sbx.files.write(`${dir}/e.txt`, 'e')
    assert.equal(await sbx.files.exists(`${dir}/e.txt`), true)
    assert.equal(await sbx.files.exists(dir), true)
    assert.equal(await sbx.files.exists(`${dir}/not-there.txt`), false)
    assert.equal(await sbx.files.exists(`${scratch()}/nowhere/at/all`), false)
  })

  test('getInfo of a file: name, type, path, size, permissions, owner, time', async () => {
    const dir = scratch()
    const p = `${dir}/info.txt`
    const before = Date.now()
    await sbx.files.write(p, 'twelve bytes')
    const info = await sbx.files.getInfo(p)
    assert.equal(info.name, 'info.txt')
    assert.equal(info.type, FileType.FILE)
    assert.equal(info.path, p)
    assert.equal(info.size, 12)
    assert.equal(info.mode, 0o644)
    assert.equal(info.permissions, '-rw-r--r--')
    assert.equal(info.owner, 'user')
    assert.equal(info.group, 'user')
    assert.ok(info.modifiedTime instanceof Date, `modifiedTime: ${info.modifiedTime}`)
    const t = info.modifiedTime.getTime()
    assert.ok(t >= before - 5000 && t <= Date.now() + 5000, `modifiedTime ${info.modifiedTime}`)
    assert.equal(info.symlinkTarget, undefined)
  })

  test('getInfo of a directory', async () => {
    const dir = scratch()
    await sbx.files.makeDir(dir)
    const info = await sbx.files.getInfo(dir)
    assert.equal(info.type, FileType.DIR)
    assert.equal(info.name, dir.split('/').pop())
    assert.equal(info.path, dir)
    assert.equal(info.mode, 0o755)
    assert.equal(info.permissions, 'drwxr-xr-x')
    assert.equal(info.owner, 'user')
    assert.equal(info.group, 'user')
  })
})

describe('rename, remove, makeDir', () => {
  test('rename moves a file and returns the new entry', async () => {
    const dir = scratch()
    await sbx.files.write(`${dir}/old.txt`, 'moving')
    const info = await sbx.files.rename(`${dir}/old.txt`, `${dir}/new.txt`)
    assert.equal(info.name, 'new.txt')
    assert.equal(info.path, `${dir}/new.txt`)
    assert.equal(info.type, FileType.FILE)
    assert.equal(await sbx.files.exists(`${dir}/old.txt`), false)
    assert.equal(await sbx.files.read(`${dir}/new.txt`), 'moving')
  })

  test('rename a directory into a new parent', async () => {
    const dir = scratch()
    await sbx.files.write(`${dir}/src/f.txt`, 'f')
    const info = await sbx.files.rename(`${dir}/src`, `${dir}/dst/moved`)
    assert.equal(info.type, FileType.DIR)
    assert.equal(info.path, `${dir}/dst/moved`)
    assert.equal(await sbx.files.read(`${dir}/dst/moved/f.txt`), 'f')
    assert.equal(await sbx.files.exists(`${dir}/src`), false)
  })

  test('rename of a missing source rejects', async () => {
    const dir = scratch()
    await assert.rejects(sbx.files.rename(`${dir}/nope`, `${dir}/still-nope`))
  })

  test('remove deletes files and whole directory trees', async () => {
    const dir = scratch()
    await sbx.files.write([
      { path: `${dir}/r.txt`, data: 'r' },
      { path: `${dir}/tree/a/b.txt`, data: 'b' },
    ])
    await sbx.files.remove(`${dir}/r.txt`)
    assert.equal(await sbx.files.exists(`${dir}/r.txt`), false)
    await sbx.files.remove(`${dir}/tree`)
    assert.equal(await sbx.files.exists(`${dir}/tree`), false)
    assert.deepEqual(await sbx.files.list(dir), [])
  })

  test('remove of a missing path is not an error', async () => {
    await sbx.files.remove(`${scratch()}/never/existed`)
  })

  test('makeDir: true when created, false when it already exists, nested', async () => {
    const dir = scratch()
    assert.equal(await sbx.files.makeDir(dir), true)
    assert.equal(await sbx.files.makeDir(dir), false)
    assert.equal(await sbx.files.makeDir(`${dir}/p/q/r`), true)
    assert.equal((await sbx.files.getInfo(`${dir}/p/q/r`)).type, FileType.DIR)
    assert.equal((await sbx.files.getInfo(`${dir}/p`)).owner, 'user')
    assert.equal(await sbx.files.makeDir(`${dir}/p/q`), false)
  })
})

describe('watchDir', () => {
  test('writing an existing file yields a write event with its name', async () => {
    const dir = scratch()
    await sbx.files.write(`${dir}/watched.txt`, 'before')
    const events = []
    const h = await sbx.files.watchDir(dir, (e) => { events.push(e) })
    try {
      await sbx.files.write(`${dir}/watched.txt`, 'after')
      await waitFor(() => events.some((e) => e.type === FilesystemEventType.WRITE &&
        e.name === 'watched.txt'), { what: `write event; got ${JSON.stringify(events)}` })
    } finally {
      await h.stop()
    }
  })

  test('recursive watch reports a new file in a nested directory as nested/file.txt', async () => {
    const dir = scratch()
    await sbx.files.makeDir(`${dir}/nested`)
    const events = []
    const h = await sbx.files.watchDir(dir, (e) => { events.push(e) }, { recursive: true })
    try {
      await sbx.files.write(`${dir}/nested/file.txt`, 'nested content')
      await waitFor(() => events.some((e) => e.name === 'nested/file.txt' &&
        e.type === FilesystemEventType.CREATE), { what: `create event; got ${JSON.stringify(events)}` })
      await waitFor(() => events.some((e) => e.name === 'nested/file.txt' &&
        e.type === FilesystemEventType.WRITE), { what: `write event; got ${JSON.stringify(events)}` })
    } finally {
      await h.stop()
    }
  })

  test('after stop() no further events are delivered', async () => {
    const dir = scratch()
    await sbx.files.makeDir(dir)
    const events = []
    let exited = false
    // The SDK aborts the stream on stop() and reports that to onExit (as a TimeoutError
    // "[canceled]"); only that it is called is checked here.
    const h = await sbx.files.watchDir(dir, (e) => { events.push(e) },
      { onExit: () => { exited = true } })
    await sbx.files.write(`${dir}/first.txt`, '1')
    await waitFor(() => events.some((e) => e.name === 'first.txt'),
      { what: `event for first.txt; got ${JSON.stringify(events)}` })
    await h.stop()
    const seen = events.length
    await sbx.files.write(`${dir}/second.txt`, '2')
    await new Promise((r) => setTimeout(r, 300))
    assert.equal(events.length, seen, `events after stop: ${JSON.stringify(events.slice(seen))}`)
    assert.ok(!events.some((e) => e.name === 'second.txt'))
    await waitFor(() => exited, { what: 'onExit after stop()' })
  })

  test('watching a missing directory rejects', async () => {
    await assert.rejects(sbx.files.watchDir(`${scratch()}/missing`, () => {}))
  })
})

describe('uploadUrl and downloadUrl', () => {
  test('URLs are unsigned in debug mode and round-trip a file via fetch', async () => {
    const dir = scratch('url')
    const p = `${dir}/up load ü.txt`
    const up = await sbx.uploadUrl(p)
    const upUrl = new URL(up)
    assert.equal(upUrl.port, String(g.port))
    assert.equal(upUrl.pathname, '/files')
    assert.equal(upUrl.searchParams.get('path'), p)
    assert.equal(upUrl.searchParams.get('signature'), null)

    const content = 'uploaded through a URL\n'
    const form = new FormData()
    form.append('file', new Blob([content]), p)
    const res = await fetch(up, { method: 'POST', body: form })
    assert.equal(res.status, 200, await res.clone().text())
    const body = await res.json()
    assert.ok(Array.isArray(body) && body.length === 1, JSON.stringify(body))
    assert.equal(body[0].path, p)
    assert.equal(body[0].type, 'file')

    assert.equal(await sbx.files.read(p), content)
    const info = await sbx.files.getInfo(p)
    assert.equal(info.owner, 'user')

    const down = await sbx.downloadUrl(p)
    const downUrl = new URL(down)
    assert.equal(downUrl.pathname, '/files')
    assert.equal(downUrl.searchParams.get('path'), p)
    assert.equal(downUrl.searchParams.get('signature'), null)
    const got = await fetch(down)
    assert.equal(got.status, 200)
    assert.equal(await got.text(), content)
  })

  test('octet-stream upload through the URL and binary download', async () => {
    const p = `${scratch('url')}/raw.bin`
    const data = randomBytes(64 * 1024)
    const up = await sbx.uploadUrl(p)
    const res = await fetch(up, {
      method: 'POST', body: data, headers: { 'Content-Type': 'application/octet-stream' },
    })
    assert.equal(res.status, 200, await res.clone().text())
    const got = await fetch(await sbx.downloadUrl(p))
    assert.equal(got.status, 200)
    assert.ok(Buffer.from(await got.arrayBuffer()).equals(data))
  })

  test('uploadUrl without a path: multipart filename is taken as the target path', async () => {
    const p = `${scratch('url')}/by-filename.txt`
    const up = await sbx.uploadUrl()
    assert.equal(new URL(up).searchParams.get('path'), null)
    const form = new FormData()
    form.append('file', new Blob(['named by the part']), p)
    const res = await fetch(up, { method: 'POST', body: form })
    assert.equal(res.status, 200, await res.clone().text())
    assert.equal((await res.json())[0].path, p)
    assert.equal(await sbx.files.read(p), 'named by the part')
  })

  test('downloadUrl of a missing file answers 404', async () => {
    const got = await fetch(await sbx.downloadUrl(`${scratch('url')}/missing.txt`))
    assert.equal(got.status, 404)
    await got.arrayBuffer()
  })
})
