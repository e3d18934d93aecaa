#!/usr/bin/env node
// Drives pages of an application in headless Chromium, one command at a time: used by
// tests/it/example_app.rs on examples/chat (see README.md beside this file).
//
// Commands are JSON lines on standard input; each gets one JSON line on standard output,
// {"id": <the command's id>, "ok": true, ...} or {"id": ..., "ok": false, "error": "..."}.
//   {"cmd": "open", "url": U}            a new page in a browser context of its own (its own
//                                        cookies), at U: answers {"page": N}
//   {"cmd": "state", "page": N}          what the chat page shows: {name, sessionId, state, lastId,
//                                        missed, sendStatus, events: [{id, scope, from, text}]}
//   {"cmd": "send", "page": N, "to": T, "text": X}
//                                        fills the page's form, submits it and waits for its
//                                        status line: {"status": "sent, id 42" | "not sent: ..."}
//   {"cmd": "fetch", "page": N, "url": U}
//                                        fetch() U from the page (its cookies, Accept:
//                                        text/event-stream): {status, body} (the body of a
//                                        refusal; a stream's is not read)
//   {"cmd": "screenshot", "page": N, "path": P}
//   {"cmd": "quit"}
// Console errors of every page come with each answer as "consoleErrors" (since the last one).
//
// The browser closes on "quit", at the end of standard input, on SIGTERM/SIGINT/SIGHUP, and
// when no command came for IDLE_MS (the test that drove it is gone).

import { createInterface } from 'node:readline';
import { closeChromium, killChromiumNow, launchChromium } from './chromium.mjs';

const IDLE_MS = 120000;
const pages = [];
let consoleErrors = [];
let browser;

function closeNow(code) {
  killChromiumNow();
  process.exit(code);
}

for (const [signal, code] of [['SIGTERM', 143], ['SIGINT', 130], ['SIGHUP', 129]]) {
  process.on(signal, () => closeNow(code));
}

let idle;
function watchIdle() {
  clearTimeout(idle);
  idle = setTimeout(() => {
    process.stderr.write(`page.mjs: no command for ${IDLE_MS} ms: closing\n`);
    closeNow(1);
  }, IDLE_MS);
}

async function launch() {
  browser = await launchChromium({ defaultViewport: { width: 900, height: 360 } });
}

function pageAt(n) {
  const page = pages[n];
  if (!page) throw new Error(`no page ${n}`);
  return page;
}

const commands = {
  async open({ url }) {
    const context = await browser.createBrowserContext();
    const page = await context.newPage();
    const n = pages.length;
    page.on('console', (msg) => {
      if (msg.type() === 'error') consoleErrors.push(`page ${n}: ${msg.text()}`);
    });
    page.on('pageerror', (err) => consoleErrors.push(`page ${n}: page error: ${err.message}`));
    const response = await page.goto(url, { waitUntil: 'load', timeout: 15000 });
    if (!response || !response.ok()) {
      throw new Error(`${url} answered ${response ? response.status() : 'nothing'}`);
    }
    pages.push(page);
    return { page: n };
  },

  async state({ page }) {
    return pageAt(page).evaluate(() => {
      const text = (id) => document.getElementById(id).textContent;
      return {
        name: text('name'),
        sessionId: document.body.dataset.id,
        state: text('state'),
        lastId: text('last-id'),
        missed: !document.getElementById('missed').hidden,
        sendStatus: text('send-status'),
        events: [...document.querySelectorAll('#events li')].map((li) => ({
          id: li.dataset.id,
          scope: li.dataset.scope,
          from: li.dataset.from,
          text: li.dataset.text,
        })),
      };
    });
  },

  async send({ page, to, text }) {
    const p = pageAt(page);
    await p.$eval('#to', (el, v) => (el.value = v), to);
    await p.$eval('#text', (el) => (el.value = ''));
    await p.type('#text', text);
    await p.click('#send button');
    await p.waitForFunction(
      () => /^(sent|not sent)/.test(document.getElementById('send-status').textContent),
      { timeout: 15000 },
    );
    return { status: await p.$eval('#send-status', (el) => el.textContent) };
  },

  async fetch({ page, url }) {
    return pageAt(page).evaluate(async (url) => {
      const controller = new AbortController();
      const res = await fetch(url, {
        headers: { Accept: 'text/event-stream' },
        signal: controller.signal,
      });
      const body = res.ok ? '' : await res.text();
      controller.abort();
      return { status: res.status, body };
    }, url);
  },

  async screenshot({ page, path }) {
    await pageAt(page).screenshot({ path, fullPage: true });
    return {};
  },
};

await launch();
watchIdle();
const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  watchIdle();
  let command;
  try {
    command = JSON.parse(line);
  } catch (e) {
    process.stdout.write(JSON.stringify({ ok: false, error: `not JSON: ${e.message}` }) + '\n');
    continue;
  }
  if (command.cmd === 'quit') break;
  let answer;
  try {
    const run = commands[command.cmd];
    if (!run) throw new Error(`unknown command ${command.cmd}`);
    answer = { ok: true, ...(await run(command)) };
  } catch (e) {
    answer = { ok: false, error: e.message };
  }
  answer.consoleErrors = consoleErrors;
  consoleErrors = [];
  process.stdout.write(JSON.stringify({ id: command.id, ...answer }) + '\n');
}
clearTimeout(idle);
await closeChromium();
process.exit(0);
