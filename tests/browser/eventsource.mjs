#!/usr/bin/env node
// Opens EventSources in headless Chromium and reports what each page saw, as one JSON line on
// standard output. Used by tests/it/browser.rs and tests/it/browser_resume.rs; see README.md
// beside this file.
//
// The input is JSON, as the first argument or on standard input: one job, or {"jobs": [...]}
// to run several at once in one browser (each in a browser context of its own: its own page,
// cookies and cache). A job:
//   page             URL of the page the EventSource runs in (its origin is the request's Origin)
//   url              the EventSource's URL
//   withCredentials  EventSource's withCredentials (default false)
//   cookies          cookies to set before the page opens, with the DevTools protocol's
//                    Network.setCookie (name, value and url, domain, path, secure, httpOnly,
//                    sameSite...); `url` defaults to the EventSource's URL
//   types            event types to listen to (default ["message"])
//   events           stop once this many events arrived (default 0: wait for the timeout)
//   timeoutMs        the longest the EventSource is watched (default 10000)
//   fetch            {headers: {...}}: instead of an EventSource, fetch() the stream with these
//                    request headers (one that is not CORS-safelisted, such as Last-Event-ID or
//                    Authorization, makes the browser preflight) and read it as an EventSource
//                    would, without reconnecting; credentials as withCredentials says
//   urls             instead of `url`: one EventSource per URL, all in the one page (each
//                    message and progress line says its `source`, the URL's index)
//   poll             {pauseMs}: long polling instead of an EventSource: fetch() `url` (which
//                    names `polling`) again and again, each response read to its end, the next
//                    request `pauseMs` (default 200) after it with `lastEventId=<the last id
//                    received>` added to the query, as a page without EventSource would
//
// Beside "jobs", the input may have "trustCertificates": PEM certificates Chromium accepts for
// HTTPS without a CA (their public keys' hashes go to --ignore-certificate-errors-spki-list).
//
// A job's result: {opened, messages: [{type, data, lastEventId, origin}], readyState,
// readyStateName, errors: [{readyState, message, atMs}], consoleErrors, failedRequests,
// timedOut, elapsedMs}; for {"jobs": [...]}, {"results": [...]} in the jobs' order. A job ends
// when `events` events arrived, when an error leaves the EventSource CLOSED (a refused or
// CORS-blocked stream ends there; a dropped one reconnects and is watched on), or at its
// timeout. While they run, progress lines {"progress": "open" | "message" | "error", "job": N,
// ...} go to standard error, so a test can publish once a stream is open.
//
// Also in a result: `opens` [{source, atMs}], every `open` (a reconnection opens again);
// `responses` [{url, status, protocol, connectionId, remotePort, type}], the DevTools
// protocol's Network.responseReceived for the page's EventSource and fetch() requests (protocol
// "h2" for HTTP/2; requests on one connection share its connectionId); with `urls`, `bySource`,
// the messages of each URL's EventSource; with `poll`, `polls` [{url, status, ids, requestedMs,
// endedMs, error}], one per request (the last one maybe still under way; times in ms of the
// page's clock), and progress lines {"progress": "poll", "phase": "request" | "open" | "end",
// "poll": n} when a poll is sent, when its response head came and when it ended.
//
// Exit status: 0 with a result; 1 when the browser or a page failed (a line with "fatal" on
// standard output, the cause on standard error); 2 for a bad input. A watchdog kills the
// browser and exits if anything hangs.

import { createHash, X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { closeChromium, killChromiumNow, launchChromium } from './chromium.mjs';

const READY_STATES = ['CONNECTING', 'OPEN', 'CLOSED'];
const CLOSED = 2;
const started = Date.now();
const elapsed = () => Date.now() - started;

async function readInput() {
  const text = process.argv[2] ?? (await readFile(0, 'utf8'));
  let input;
  try {
    input = JSON.parse(text);
  } catch (e) {
    throw new JobError(`the input is not JSON: ${e.message}`);
  }
  const several = input !== null && typeof input === 'object' && 'jobs' in input;
  const jobs = several ? input.jobs : [input];
  if (!Array.isArray(jobs) || jobs.length === 0) throw new JobError('"jobs" must be a non-empty list');
  const trust = several && Array.isArray(input.trustCertificates) ? input.trustCertificates : [];
  return { several, jobs: jobs.map(checkJob), spkiHashes: trust.map(spkiHash) };
}

// The base64 SHA-256 of a PEM certificate's SubjectPublicKeyInfo, as
// --ignore-certificate-errors-spki-list wants it.
function spkiHash(pem, index) {
  try {
    const spki = new X509Certificate(pem).publicKey.export({ type: 'spki', format: 'der' });
    return createHash('sha256').update(spki).digest('base64');
  } catch (e) {
    throw new JobError(`trustCertificates[${index}] is not a PEM certificate: ${e.message}`);
  }
}

function checkJob(job, index) {
  const urls = Array.isArray(job?.urls) ? job.urls : null;
  if (urls && (urls.length === 0 || !urls.every((u) => typeof u === 'string'))) {
    throw new JobError(`job ${index}: "urls" must be a non-empty list of URLs`);
  }
  if (urls && typeof job.url !== 'string') job = { ...job, url: urls[0] };
  for (const key of ['page', 'url']) {
    if (typeof job?.[key] !== 'string') throw new JobError(`job ${index} needs "${key}" (a URL)`);
  }
  return {
    page: job.page,
    url: job.url,
    withCredentials: job.withCredentials === true,
    cookies: Array.isArray(job.cookies) ? job.cookies : [],
    types: Array.isArray(job.types) && job.types.length ? job.types : ['message'],
    events: Number.isInteger(job.events) && job.events > 0 ? job.events : 0,
    timeoutMs: Number.isFinite(job.timeoutMs) && job.timeoutMs > 0 ? job.timeoutMs : 10000,
    fetchHeaders: job.fetch && typeof job.fetch === 'object' ? { ...job.fetch.headers } : null,
    urls,
    poll:
      job.poll && typeof job.poll === 'object'
        ? { pauseMs: Number.isFinite(job.poll.pauseMs) && job.poll.pauseMs >= 0 ? job.poll.pauseMs : 200 }
        : null,
  };
}

class JobError extends Error {}

let browser;

for (const [signal, code] of [['SIGTERM', 143], ['SIGINT', 130], ['SIGHUP', 129]]) {
  process.on(signal, () => {
    process.stderr.write(`eventsource.mjs: ${signal}: closing the browser\n`);
    killChromiumNow();
    process.exit(code);
  });
}

async function cleanUp() {
  await closeChromium();
  browser = undefined;
}

async function run(jobs, spkiHashes) {
  // A last resort: whatever hangs (the browser's start, a protocol call), the process ends.
  const longest = Math.max(...jobs.map((job) => job.timeoutMs));
  const watchdog = setTimeout(() => {
    process.stderr.write(`eventsource.mjs: watchdog: still running after ${elapsed()} ms\n`);
    killChromiumNow();
    process.stdout.write(JSON.stringify({ fatal: 'watchdog: the run hung' }) + '\n');
    process.exit(1);
  }, longest + 30000);
  watchdog.unref();

  browser = await launchChromium({
    args: spkiHashes.length ? [`--ignore-certificate-errors-spki-list=${spkiHashes.join(',')}`] : [],
  });
  const results = await Promise.all(jobs.map((job, index) => watch(job, index)));
  // Let the last log entries (a CORS message follows the error event) come in.
  await new Promise((r) => setTimeout(r, 100));
  await cleanUp();
  clearTimeout(watchdog);
  return results;
}

async function watch(job, index) {
  const progress = (kind, fields) =>
    process.stderr.write(JSON.stringify({ progress: kind, job: index, ...fields }) + '\n');
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  const cdp = await page.createCDPSession();
  const consoleErrors = [];
  const failedRequests = [];
  // Puppeteer reports the network stack's log entries (where CORS failures show) as console
  // messages too.
  page.on('console', (msg) => {
    if (msg.type() === 'error') consoleErrors.push(msg.text());
  });
  page.on('pageerror', (err) => consoleErrors.push(`page error: ${err.message}`));
  page.on('requestfailed', (req) => {
    failedRequests.push({ url: req.url(), error: req.failure()?.errorText ?? 'failed' });
  });
  // How each stream request was answered: the protocol and the connection it came on.
  const responses = [];
  cdp.on('Network.responseReceived', ({ type, response }) => {
    if (type !== 'EventSource' && type !== 'Fetch') return;
    responses.push({
      url: response.url,
      status: response.status,
      protocol: response.protocol ?? null,
      connectionId: response.connectionId ?? null,
      remotePort: response.remotePort ?? null,
      type,
    });
  });
  await cdp.send('Network.enable');

  for (const cookie of job.cookies) {
    const params = { url: cookie.domain ? undefined : job.url, ...cookie };
    const { success } = await cdp.send('Network.setCookie', params);
    if (success === false) throw new Error(`Network.setCookie refused ${JSON.stringify(cookie)}`);
  }

  const response = await page.goto(job.page, { waitUntil: 'load', timeout: 10000 });
  if (!response || !response.ok()) {
    throw new Error(`the page ${job.page} answered ${response ? response.status() : 'nothing'}`);
  }

  const messages = [];
  const errors = [];
  const opens = [];
  let opened = false;
  let finish;
  const done = new Promise((resolve) => (finish = resolve));
  const timer = setTimeout(() => finish(true), job.timeoutMs);

  await page.exposeFunction('__redisseReport', (kind, info) => {
    if (kind === 'open') {
      opened = true;
      opens.push({ source: info.source ?? 0, atMs: elapsed() });
      progress('open', { source: info.source ?? 0, atMs: elapsed() });
    } else if (kind === 'poll') {
      progress('poll', { phase: info.phase, poll: info.poll, atMs: elapsed() });
    } else if (kind === 'message') {
      messages.push(info);
      progress('message', { count: messages.length, source: info.source ?? 0, atMs: elapsed() });
      if (job.events && messages.length >= job.events) finish(false);
    } else if (kind === 'error') {
      errors.push({ readyState: info.readyState, message: info.message, source: info.source ?? 0, atMs: elapsed() });
      progress('error', { readyState: info.readyState, source: info.source ?? 0, atMs: elapsed() });
      if (info.readyState === CLOSED) finish(false);
    }
  });

  if (job.urls) await page.evaluate(openSeveral, job.urls, job.withCredentials, job.types);
  else if (job.poll) await page.evaluate(longPoll, job.url, job.withCredentials, job.types, job.poll.pauseMs);
  else await page.evaluate(
    (url, withCredentials, types, fetchHeaders) => {
      const report = window.__redisseReport;
      if (!fetchHeaders) {
        const es = new EventSource(url, { withCredentials });
        window.__redisseSource = es;
        es.addEventListener('open', () => report('open', {}));
        es.addEventListener('error', () => report('error', { readyState: es.readyState }));
        for (const type of types) {
          es.addEventListener(type, (e) =>
            report('message', { type: e.type, data: e.data, lastEventId: e.lastEventId, origin: e.origin }),
          );
        }
        return;
      }
      // fetch() with request headers of the job's: what an EventSource cannot send (a header
      // that is not CORS-safelisted makes the browser preflight). The stream is read as an
      // EventSource would, without reconnecting, and reported the same way.
      const controller = new AbortController();
      let closed = false;
      const source = {
        readyState: 0,
        close: () => {
          closed = true;
          controller.abort();
        },
      };
      window.__redisseSource = source;
      const fail = (message) => {
        if (closed || source.readyState === 2) return;
        source.readyState = 2;
        report('error', { readyState: 2, message });
      };
      (async () => {
        let res;
        try {
          res = await fetch(url, {
            headers: { Accept: 'text/event-stream', ...fetchHeaders },
            credentials: withCredentials ? 'include' : 'same-origin',
            cache: 'no-store',
            signal: controller.signal,
          });
        } catch (e) {
          return fail(`fetch failed: ${e}`);
        }
        const contentType = res.headers.get('content-type') || '';
        if (res.status !== 200 || !contentType.startsWith('text/event-stream')) {
          return fail(`status ${res.status}, content type ${contentType}`);
        }
        source.readyState = 1;
        report('open', {});
        const origin = new URL(res.url).origin;
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = '';
        let lastEventId = '';
        for (;;) {
          let chunk;
          try {
            chunk = await reader.read();
          } catch (e) {
            return fail(`read failed: ${e}`);
          }
          if (chunk.done) return fail('the stream ended');
          buffer += chunk.value.replace(/\r\n?/g, '\n');
          let end;
          while ((end = buffer.indexOf('\n\n')) >= 0) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            let type = 'message';
            const data = [];
            for (const line of block.split('\n')) {
              if (line.startsWith(':')) continue;
              const colon = line.indexOf(':');
              const field = colon < 0 ? line : line.slice(0, colon);
              let value = colon < 0 ? '' : line.slice(colon + 1);
              if (value.startsWith(' ')) value = value.slice(1);
              if (field === 'data') data.push(value);
              else if (field === 'event') type = value;
              else if (field === 'id' && !value.includes('\0')) lastEventId = value;
            }
            if (data.length && types.includes(type)) {
              report('message', { type, data: data.join('\n'), lastEventId, origin });
            }
          }
        }
      })();
    },
    job.url,
    job.withCredentials,
    job.types,
    job.fetchHeaders,
  );

  const timedOut = await done;
  clearTimeout(timer);
  const [readyState, polls] = await page.evaluate(() => {
    const source = window.__redisseSource;
    const state = source.readyState;
    source.close();
    return [state, window.__redissePolls ?? []];
  });
  const result = {
    opened,
    messages,
    opens,
    responses,
    readyState,
    readyStateName: READY_STATES[readyState] ?? String(readyState),
    errors,
    consoleErrors,
    failedRequests,
    timedOut,
    elapsedMs: elapsed(),
  };
  if (job.urls) result.bySource = job.urls.map((_, i) => messages.filter((m) => m.source === i));
  if (job.poll) result.polls = polls;
  return result;
}

// In the page: one EventSource per URL; `window.__redisseSource` stands for them all (CLOSED
// when one is, CONNECTING when one is, else OPEN) and closes them all.
function openSeveral(urls, withCredentials, types) {
  const report = window.__redisseReport;
  const sources = urls.map((url, source) => {
    const es = new EventSource(url, { withCredentials });
    es.addEventListener('open', () => report('open', { source }));
    es.addEventListener('error', () => report('error', { readyState: es.readyState, source }));
    for (const type of types) {
      es.addEventListener(type, (e) =>
        report('message', { type: e.type, data: e.data, lastEventId: e.lastEventId, origin: e.origin, source }),
      );
    }
    return es;
  });
  window.__redisseSource = {
    get readyState() {
      const states = sources.map((es) => es.readyState);
      return states.includes(2) ? 2 : states.includes(0) ? 0 : 1;
    },
    close: () => sources.forEach((es) => es.close()),
  };
}

// In the page: long polling with fetch(), each response read to its end and parsed as an
// event stream; the next request resumes with `lastEventId=` the last id received. A failed
// request is tried again after the pause (readyState CONNECTING); an answer other than a 200
// event stream ends the loop (CLOSED).
function longPoll(url, withCredentials, types, pauseMs) {
  const report = window.__redisseReport;
  let closed = false;
  const source = { readyState: 0, close: () => (closed = true) };
  window.__redisseSource = source;
  // Every request, the one under way included, for the result.
  const polls = (window.__redissePolls = []);
  const now = () => Math.round(performance.now());
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const parse = (text, origin, record, position) => {
    let lastEventId = position;
    for (const block of text.replace(/\r\n?/g, '\n').split('\n\n')) {
      let type = 'message';
      const data = [];
      let hasData = false;
      for (const line of block.split('\n')) {
        if (line === '' || line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? '' : line.slice(colon + 1);
        if (value.startsWith(' ')) value = value.slice(1);
        if (field === 'data') {
          data.push(value);
          hasData = true;
        } else if (field === 'event') type = value;
        else if (field === 'id' && !value.includes('\0')) lastEventId = value;
      }
      if (hasData && types.includes(type)) {
        record.ids.push(lastEventId);
        report('message', { type, data: data.join('\n'), lastEventId, origin });
      }
    }
    return lastEventId;
  };
  (async () => {
    let position = '';
    for (let n = 0; !closed; n++) {
      const target = new URL(url);
      if (position !== '') {
        target.search += `${target.search ? '&' : '?'}lastEventId=${encodeURIComponent(position)}`;
      }
      const record = { url: target.href, status: null, ids: [], requestedMs: now(), endedMs: null, error: null };
      polls.push(record);
      report('poll', { phase: 'request', poll: n });
      try {
        const res = await fetch(target.href, {
          headers: { Accept: 'text/event-stream' },
          credentials: withCredentials ? 'include' : 'same-origin',
          cache: 'no-store',
        });
        record.status = res.status;
        const contentType = res.headers.get('content-type') || '';
        if (res.status !== 200 || !contentType.startsWith('text/event-stream')) {
          source.readyState = 2;
          record.error = `status ${res.status}, content type ${contentType}`;
          record.endedMs = now();
          report('poll', { phase: 'end', poll: n });
          report('error', { readyState: 2, message: record.error });
          return;
        }
        if (source.readyState !== 1) {
          source.readyState = 1;
          report('open', {});
        }
        report('poll', { phase: 'open', poll: n });
        const text = await res.text();
        position = parse(text, new URL(res.url).origin, record, position);
      } catch (e) {
        record.error = `${e}`;
        source.readyState = 0;
        report('error', { readyState: 0, message: record.error });
      }
      record.endedMs = now();
      report('poll', { phase: 'end', poll: n });
      await sleep(pauseMs);
    }
  })();
}

let input;
try {
  input = await readInput();
} catch (e) {
  process.stderr.write(`eventsource.mjs: ${e.message}\n`);
  process.exit(2);
}
try {
  const results = await run(input.jobs, input.spkiHashes);
  process.stdout.write(JSON.stringify(input.several ? { results } : results[0]) + '\n');
  process.exit(0);
} catch (e) {
  process.stderr.write(`eventsource.mjs: ${e.stack || e.message}\n`);
  await cleanUp();
  process.stdout.write(JSON.stringify({ fatal: e.message }) + '\n');
  process.exit(1);
}
