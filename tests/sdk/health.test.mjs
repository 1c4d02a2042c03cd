// SPDX-License-Identifier: Apache-2.0
// The SDK reaches guestd in debug mode: sandbox creation skips the control plane and talks to
// guestd's /health directly.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { Sandbox } from 'e2b'
import { startGuestd } from './harness.mjs'

test('Sandbox.create in debug mode reaches /health', async () => {
  const g = await startGuestd()
  try {
    const sbx = await Sandbox.create()
    assert.equal(sbx.sandboxId, 'debug_sandbox_id')
    assert.equal(await sbx.isRunning(), true)
  } finally {
    assert.equal(await g.stop(), 0)
  }
})

test('Sandbox.connect in debug mode reaches /health', async () => {
  const g = await startGuestd()
  try {
    const sbx = await Sandbox.connect('some_id')
    assert.equal(await sbx.isRunning(), true)
  } finally {
    await g.stop()
  }
})

test('isRunning fails once guestd is gone', async () => {
  const g = await startGuestd()
  const sbx = await Sandbox.create()
  assert.equal(await sbx.isRunning(), true)
  await g.stop()
  await assert.rejects(() => sbx.isRunning({ requestTimeoutMs: 5000 }))
})
