// syncast's streams under a spec-following EventSource client: the npm `eventsource` 3.x package
// (WHATWG HTML "Server-sent events": reconnects after any end of a 200 text/event-stream
// response, after `retry:` ms; fails for good on any other status), against the real binary on
// a free local port. No browser.
//
// Builds nothing: `scripts/eventsource.sh` builds the binary first. Environment:
//   SYNCAST_BIN   the binary (default: <repo>/target/debug/syncast, or $CARGO_TARGET_DIR/debug/syncast)
//   E2E_OUT       where the server logs go (default: <repo>/target/e2e)
//
// Every request an EventSource makes goes through a `fetch` wrapper that counts it and can add
// headers, so a test can see that a client reconnected by itself (the same object, a new
// request) or that it never asked again.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { EventSource } from "eventsource";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const TARGET = process.env.CARGO_TARGET_DIR || path.join(REPO, "target");
const BIN = process.env.SYNCAST_BIN || path.join(TARGET, "debug", "syncast");
const OUT = process.env.E2E_OUT || path.join(REPO, "target", "e2e");
// Upper bound for any one wait; never an expected duration.
const PATIENCE = 20_000;

const servers = [];
const sources = [];

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function waitFor(what, probe) {
  const deadline = Date.now() + PATIENCE;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

// Starts syncast with `args` on a free port and its own store; stopped by `after`.
async function startServer(name, args = []) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "syncast-es-"));
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  fs.mkdirSync(OUT, { recursive: true });
  const log = path.join(OUT, `eventsource-${name}.log`);
  const out = fs.openSync(log, "w");
  const proc = spawn(
    BIN,
    ["--listen", `127.0.0.1:${port}`, "--db", path.join(dir, "alarms.db"), "--refresh", "50ms",
      "--tick", "100ms", "--heartbeat", "1s", ...args],
    { stdio: ["ignore", out, out] },
  );
  const exited = new Promise((resolve) => proc.on("exit", (code, signal) => resolve({ code, signal })));
  await Promise.race([
    waitFor(`${base}/healthz`, async () => (await fetch(`${base}/healthz`).catch(() => null))?.ok),
    exited.then((e) => { throw new Error(`syncast exited early (${JSON.stringify(e)}); see ${log}`); }),
  ]);
  const s = { proc, base, dir, log, exited };
  servers.push(s);
  return s;
}

after(async () => {
  for (const es of sources) es.close();
  for (const s of servers) {
    s.proc.kill("SIGTERM");
    const { code } = await s.exited;
    assert.equal(code, 0, `syncast exited with ${code}; see ${s.log}`);
    fs.rmSync(s.dir, { recursive: true, force: true });
  }
});

// An EventSource that records what happens to it: every request it makes (with the headers it
// sent), every event by type, every error with the readyState at that moment.
function open(url, { headers = {}, events = [] } = {}) {
  const seen = { requests: [], events: [], errors: [] };
  const es = new EventSource(url, {
    fetch: (input, init) => {
      const h = { ...(init?.headers || {}), ...headers };
      seen.requests.push(h);
      return fetch(input, { ...init, headers: h });
    },
  });
  for (const type of ["message", "refused", "welcome", "reset", "presence", "shutdown", ...events]) {
    es.addEventListener(type, (e) => seen.events.push({ type, data: JSON.parse(e.data), lastEventId: e.lastEventId }));
  }
  es.addEventListener("error", (e) => seen.errors.push({ readyState: es.readyState, status: e.code }));
  sources.push(es);
  return { es, seen };
}

const of = (seen, type) => seen.events.filter((e) => e.type === type);

async function join(base, name) {
  const r = await fetch(`${base}/chat/join`, { method: "POST", body: name });
  assert.equal(r.status, 201);
  return (await r.json()).token;
}

async function metric(base, name) {
  const text = await (await fetch(`${base}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  return line === undefined ? undefined : Number(line.split(" ")[1]);
}

test("an alarm EventSource refused at --max-clients comes back by itself once a slot frees", async () => {
  const s = await startServer("alarm-cap", ["--max-clients", "1"]);
  const held = open(`${s.base}/sse/call/holder`);
  await waitFor("the holder's first event", () => of(held.seen, "message").length > 0);

  const late = open(`${s.base}/sse/call/late?mode=change`);
  await waitFor("a refused event", () => of(late.seen, "refused").length > 0);
  const refused = of(late.seen, "refused")[0].data;
  assert.equal(refused.reason, "max-clients");
  assert.ok(refused.retry_ms >= 1000 && refused.retry_ms <= 3000, `2 s ± 50 %: ${refused.retry_ms}`);
  // The end of the response is not a failure: the client waits to reconnect, it is not CLOSED.
  await waitFor("the error that schedules a reconnect", () => late.seen.errors.length > 0);
  assert.equal(late.seen.errors[0].readyState, EventSource.CONNECTING);
  assert.equal(of(late.seen, "message").length, 0);

  held.es.close();
  await waitFor("the same EventSource's first value", () => of(late.seen, "message").length > 0);
  assert.deepEqual(of(late.seen, "message")[0].data, { alarm: false });
  assert.equal(late.es.readyState, EventSource.OPEN);
  assert.ok(late.seen.requests.length >= 2, "it asked again by itself");
  assert.equal(await metric(s.base, 'syncast_rejected_total{reason="max-clients"}'), of(late.seen, "refused").length);
  late.es.close();
});

test("a chat EventSource refused at --max-clients resumes its session by itself once a slot frees", async () => {
  const s = await startServer("chat-cap", ["--max-clients", "1"]);
  const name = `ann${process.pid}`;
  const token = await join(s.base, name);
  const held = open(`${s.base}/sse/call/holder`);
  await waitFor("the holder's first event", () => of(held.seen, "message").length > 0);

  const chat = open(`${s.base}/chat/stream?token=${token}`);
  await waitFor("a refused event", () => of(chat.seen, "refused").length > 0);
  assert.equal(of(chat.seen, "refused")[0].data.reason, "max-clients");
  assert.equal(of(chat.seen, "welcome").length, 0);

  held.es.close();
  await waitFor("the same EventSource's welcome", () => of(chat.seen, "welcome").length > 0);
  assert.equal(of(chat.seen, "welcome")[0].data.name, name);
  assert.equal(chat.es.readyState, EventSource.OPEN);
  // Events sent meanwhile by another member arrive on it.
  const other = await join(s.base, `bea${process.pid}`);
  await waitFor("bea's join on ann's stream", () =>
    of(chat.seen, "presence").some((e) => (e.data.joined || []).includes(`bea${process.pid}`)));
  await fetch(`${s.base}/chat/leave`, { method: "POST", headers: { Authorization: `Bearer ${other}` } });
  chat.es.close();
});

test("refusals the user must act on stay 4xx and end the EventSource for good", async () => {
  const s = await startServer("fatal");
  const taken = `cat${process.pid}`;
  await join(s.base, taken);
  const cases = [
    ["bad id", `${s.base}/sse/call/no%20spaces`, 400],
    ["bad mode", `${s.base}/sse/call/42?mode=sometimes`, 400],
    ["unknown token", `${s.base}/chat/stream?token=${"0".repeat(48)}`, 401],
    ["name taken", `${s.base}/chat/stream?name=${taken}`, 409],
    ["bad name", `${s.base}/chat/stream?name=a%20b`, 400],
  ];
  const opened = cases.map(([what, url, status]) => ({ what, status, ...open(url) }));
  for (const c of opened) {
    await waitFor(`${c.what}: the failure`, () => c.seen.errors.length > 0);
    assert.equal(c.seen.errors[0].status, c.status, c.what);
    assert.equal(c.es.readyState, EventSource.CLOSED, c.what);
  }
  // Longer than any reconnection time these clients know (3 s by default): none asks again.
  await new Promise((r) => setTimeout(r, 4_000));
  for (const c of opened) {
    assert.equal(c.seen.requests.length, 1, `${c.what}: asked again`);
    assert.equal(c.seen.errors.length, 1, c.what);
  }
});

test("a Last-Event-ID the server cannot use starts the chat stream with reset, never an error", async () => {
  const s = await startServer("resume");
  const author = await join(s.base, `dan${process.pid}`);
  for (const text of ["one", "two"]) {
    const r = await fetch(`${s.base}/chat/messages`, { method: "POST", body: text, headers: { Authorization: `Bearer ${author}` } });
    assert.equal(r.status, 202);
  }
  const hints = [
    ["empty header", { headers: { "Last-Event-ID": "" } }],
    ["garbage header", { headers: { "Last-Event-ID": "not-a-number" } }],
    ["an id from the future", { headers: { "Last-Event-ID": "999999999" } }],
    ["garbage query", { query: "&last_event_id=abc" }],
    ["negative query", { query: "&last_event_id=-1" }],
  ];
  for (const [what, { headers, query = "" }] of hints) {
    const token = await join(s.base, `eve${process.pid}x${hints.findIndex(([w]) => w === what)}`);
    const c = open(`${s.base}/chat/stream?token=${token}${query}`, { headers });
    await waitFor(`${what}: welcome`, () => of(c.seen, "welcome").length > 0);
    assert.equal(c.es.readyState, EventSource.OPEN, what);
    if (what !== "empty header") {
      await waitFor(`${what}: reset`, () => of(c.seen, "reset").length > 0);
      assert.equal(typeof of(c.seen, "reset")[0].data.oldest, "number", what);
      // Everything still kept follows the reset: nothing the client could have missed is lost.
      await waitFor(`${what}: the kept messages`, () => of(c.seen, "message").length >= 2);
    }
    assert.deepEqual(c.seen.errors, [], what);
    c.es.close();
  }
});
