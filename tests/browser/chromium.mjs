// Debian's Chromium (or $CHROMIUM) for the test scripts, eventsource.mjs and page.mjs: started
// headless with a fresh profile in a temporary folder, without background networking (on a
// closed network its connections fail), and never outliving the script: puppeteer starts it
// detached, in a process group of its own, so `killChromiumNow` kills that group.

import { rmSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import puppeteer from 'puppeteer-core';

let browser;
let userDataDir;

// Starts the one browser of this script; `args` are added to the common flags.
export async function launchChromium({ args = [], defaultViewport } = {}) {
  userDataDir = await mkdtemp(join(tmpdir(), 'redisse-chromium-'));
  browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    userDataDir,
    ...(defaultViewport ? { defaultViewport } : {}),
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      ...args,
    ],
    timeout: 20000,
    protocolTimeout: 20000,
    // The scripts' own signal handlers kill the browser and exit.
    handleSIGINT: false,
    handleSIGTERM: false,
    handleSIGHUP: false,
  });
  return browser;
}

// At once (a signal, a watchdog): the browser's process group killed, its profile removed.
export function killChromiumNow() {
  const proc = browser?.process();
  if (proc && proc.exitCode === null && proc.signalCode === null) {
    try {
      process.kill(-proc.pid, 'SIGKILL');
    } catch {
      proc.kill('SIGKILL');
    }
  }
  if (userDataDir) rmSync(userDataDir, { recursive: true, force: true });
}

// At the end: closed politely (5 s at most, then killed), its profile removed.
export async function closeChromium() {
  if (browser) {
    const proc = browser.process();
    const closed = browser.close().catch(() => {});
    await Promise.race([closed, new Promise((r) => setTimeout(r, 5000))]);
    if (proc && proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    browser = undefined;
  }
  if (userDataDir) {
    await rm(userDataDir, { recursive: true, force: true }).catch(() => {});
    userDataDir = undefined;
  }
}
