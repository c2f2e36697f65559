// The page at `/` in Debian's headless Chromium (through playwright-core, never a downloaded
// browser) against a real syncast binary on a free local port with its own temporary store.
//
// Builds nothing: `scripts/e2e.sh` builds the binary first. Environment:
//   SYNCAST_BIN   the binary (default: <repo>/target/debug/syncast, or $CARGO_TARGET_DIR/debug/syncast)
//   CHROMIUM      the browser (default: /usr/bin/chromium)
//   E2E_OUT       where screenshots and the server log go (default: <repo>/target/e2e)
//
// One page reaches the server through a small TCP relay owned by this test, so the test can cut
// that page's connections and refuse new ones ("offline"), then let them through again: the
// browser's own EventSource reconnect, with its Last-Event-ID header, is what brings the page back.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const TARGET = process.env.CARGO_TARGET_DIR || path.join(REPO, "target");
const BIN = process.env.SYNCAST_BIN || path.join(TARGET, "debug", "syncast");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const OUT = process.env.E2E_OUT || path.join(REPO, "target", "e2e");
// Upper bound for any one wait; never an expected duration.
const PATIENCE = 20_000;

let server; // { proc, port, base, dir, log }
let browser;

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
    const v = await probe().catch(() => undefined);
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

// Starts syncast; with `again`, on the same port and store as a server that has stopped.
// `extra`: more flags, and the log file's name.
async function startServer(again, extra = { args: [], log: "server.log" }) {
  const dir = again ? again.dir : fs.mkdtempSync(path.join(os.tmpdir(), "syncast-e2e-"));
  const port = again ? again.port : await freePort();
  const base = `http://127.0.0.1:${port}`;
  fs.mkdirSync(OUT, { recursive: true });
  const log = path.join(OUT, extra.log);
  const out = fs.openSync(log, again ? "a" : "w");
  const proc = spawn(
    BIN,
    ["--listen", `127.0.0.1:${port}`, "--db", path.join(dir, "alarms.db"), "--refresh", "50ms",
      "--heartbeat", "1s", "--log-level", "debug", ...extra.args],
    { stdio: ["ignore", out, out] },
  );
  const exited = new Promise((resolve) => proc.on("exit", (code, signal) => resolve({ code, signal })));
  await Promise.race([
    waitFor(`${base}/healthz`, async () => (await fetch(`${base}/healthz`)).ok),
    exited.then((e) => { throw new Error(`syncast exited early (${JSON.stringify(e)}); see ${log}`); }),
  ]);
  return { proc, port, base, dir, log, exited };
}

async function stopServer(s) {
  s.proc.kill("SIGTERM");
  const { code } = await s.exited;
  assert.equal(code, 0, `syncast exited with ${code}; see ${s.log}`);
}

// A TCP relay to `port`. While offline it closes every relayed connection and refuses new ones.
// It records each request head it relays, so the test can see what the browser sent.
function relay(port) {
  const conns = new Set();
  const heads = [];
  let offline = false;
  const srv = net.createServer((client) => {
    if (offline) { client.destroy(); return; }
    const upstream = net.connect(port, "127.0.0.1");
    const pair = { client, upstream };
    conns.add(pair);
    const end = () => { client.destroy(); upstream.destroy(); conns.delete(pair); };
    client.on("data", (d) => {
      const text = d.toString("latin1");
      if (/^[A-Z]+ \S+ HTTP\/1\.1\r\n/.test(text)) heads.push(text.split("\r\n\r\n")[0]);
      upstream.write(d);
    });
    upstream.on("data", (d) => client.write(d));
    for (const s of [client, upstream]) { s.on("error", end); s.on("close", end); }
  });
  return new Promise((resolve) => {
    srv.listen(0, "127.0.0.1", () => resolve({
      port: srv.address().port,
      heads,
      setOffline(v) {
        offline = v;
        if (v) for (const { client, upstream } of conns) { client.destroy(); upstream.destroy(); }
      },
      close() { for (const { client, upstream } of conns) { client.destroy(); upstream.destroy(); } srv.close(); },
    }));
  });
}

async function newPage(url, viewport = { width: 1100, height: 900 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.dialogs = [];
  page.on("dialog", (d) => { page.dialogs.push(d.message()); d.dismiss().catch(() => {}); });
  page.errors = [];
  page.on("pageerror", (e) => page.errors.push(String(e)));
  page.external = [];
  page.on("request", (r) => { if (!r.url().startsWith(url)) page.external.push(r.url()); });
  await page.goto(url + "/");
  return page;
}

const text = (page, sel) => page.locator(sel).textContent();
const waitText = (page, sel, want) =>
  waitFor(`${sel} to read ${JSON.stringify(want)}`, async () => (await text(page, sel)) === want);

// Every message line (not notices) in the page's chat log, as "from: text".
const messages = (page) =>
  page.locator("#chat-log li.msg").evaluateAll((lis) =>
    lis.map((li) => `${li.querySelector(".from").textContent}: ${li.querySelector(".text").textContent}`));

async function send(page, words) {
  await page.locator("#chat-text").fill(words);
  await page.locator("#chat-text").press("Enter");
  await waitFor(`"${words}" shown once on the sender's page`, async () =>
    (await messages(page)).filter((m) => m.endsWith(`: ${words}`)).length === 1);
}

async function join(page, name) {
  await page.locator("#chat-name").fill(name);
  await page.locator("#chat-name").press("Enter");
  await waitText(page, "#chat-conn", "live");
  await waitText(page, "#chat-me", name);
}

const online = (page) => page.locator("#chat-online li").allTextContents();

before(async () => {
  assert.ok(fs.existsSync(BIN), `no syncast binary at ${BIN}: run \`cargo build\` (scripts/e2e.sh does)`);
  assert.ok(fs.existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}: apt-get install chromium`);
  server = await startServer();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Playwright gives every launch a new, empty --user-data-dir of its own.
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});

after(async () => {
  if (browser) await browser.close();
  if (server) {
    await stopServer(server);
    fs.rmSync(server.dir, { recursive: true, force: true });
  }
});

test("the page loads with both panels and asks no other host for anything", async () => {
  const page = await newPage(server.base);
  assert.equal(await page.title(), "syncast");
  await page.locator("#alarm-panel").waitFor();
  await page.locator("#chat-panel").waitFor();
  // Every input has a label a screen reader announces.
  for (const id of ["alarm-id", "chat-name"]) {
    assert.ok((await page.getByLabel(id === "alarm-id" ? "User id" : "Your name").getAttribute("id")) === id);
  }
  assert.deepEqual(page.external, []);
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test("the alarm indicator follows a PUT from outside the page, and its button flips it", async () => {
  const page = await newPage(server.base);
  const id = `e2e-alarm-${process.pid}`;
  await page.locator("#alarm-id").fill(id);
  await page.locator("#alarm-id").press("Enter"); // keyboard only
  await waitText(page, "#alarm-conn", "live");
  await waitText(page, "#alarm-state", "OFF");

  const put = await fetch(`${server.base}/alarms/${id}`, { method: "PUT", body: "true" });
  assert.equal(put.status, 204);
  await waitText(page, "#alarm-state", "ON");
  assert.equal(await page.locator("#alarm-indicator").getAttribute("data-alarm"), "on");
  await page.locator("#alarm-panel").screenshot({ path: path.join(OUT, "alarm-on.png") });

  await page.locator("#alarm-flip").click();
  await waitText(page, "#alarm-state", "OFF");
  const got = await (await fetch(`${server.base}/alarms/${id}`)).json();
  assert.equal(got.alarm, false);
  await page.locator("#alarm-panel").screenshot({ path: path.join(OUT, "alarm-off.png") });

  // An id the server would refuse is refused in words before any request.
  await page.locator("#alarm-id").fill("no spaces");
  await page.locator("#alarm-id").press("Enter");
  await waitFor("invalid id error", async () => (await text(page, "#alarm-error")).includes("Invalid id"));
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test("the alarm panel says it is reconnecting when its stream drops, then is live again", async () => {
  const r = await relay(server.port);
  const page = await newPage(`http://127.0.0.1:${r.port}`);
  const id = `e2e-drop-${process.pid}`;
  await page.locator("#alarm-id").fill(id);
  await page.locator("#alarm-id").press("Enter");
  await waitText(page, "#alarm-conn", "live");
  r.setOffline(true);
  await waitText(page, "#alarm-conn", "reconnecting");
  assert.equal((await fetch(`${server.base}/alarms/${id}`, { method: "PUT", body: "true" })).status, 204);
  r.setOffline(false);
  await waitText(page, "#alarm-conn", "live");
  await waitText(page, "#alarm-state", "ON");
  await page.context().close();
  r.close();
});

test("a page refused at --max-clients says the server is busy and comes back by itself", async () => {
  const full = await startServer(undefined, { args: ["--max-clients", "1"], log: "server-busy.log" });
  const first = await newPage(full.base);
  await first.locator("#alarm-id").fill(`e2e-first-${process.pid}`);
  await first.locator("#alarm-id").press("Enter");
  await waitText(first, "#alarm-conn", "live");
  const second = await newPage(full.base);
  await second.locator("#alarm-id").fill(`e2e-second-${process.pid}`);
  await second.locator("#alarm-id").press("Enter");
  const busy = await waitFor("the busy notice", async () => {
    const t = await text(second, "#alarm-conn");
    return /^server busy, retrying in \d+ s$/.test(t) && t;
  });
  assert.equal(await second.locator("#alarm-conn").getAttribute("data-state"), "busy", busy);
  await second.locator("#alarm-panel").screenshot({ path: path.join(OUT, "alarm-busy.png") });
  await first.context().close(); // frees the slot
  await waitText(second, "#alarm-conn", "live");
  await waitText(second, "#alarm-state", "OFF");
  assert.deepEqual(second.errors, []);
  await second.context().close();
  await stopServer(full);
  fs.rmSync(full.dir, { recursive: true, force: true });
});

test("two people chat; one drops off, comes back, and sees what it missed exactly once", async () => {
  const r = await relay(server.port);
  const alice = await newPage(server.base);
  const bob = await newPage(`http://127.0.0.1:${r.port}`);
  const a = `alice${process.pid}`;
  const b = `bob${process.pid}`;

  await join(alice, a);
  // A taken name is refused in words.
  await bob.locator("#chat-name").fill(a);
  await bob.locator("#chat-join").click();
  await waitFor("name-taken error", async () => /taken/.test(await text(bob, "#chat-error")));
  await join(bob, b);
  await waitFor("both online on alice's page", async () => (await online(alice)).includes(b));
  await waitFor("both online on bob's page", async () => (await online(bob)).includes(a));
  await waitFor("join notice", async () => (await text(alice, "#chat-log")).includes(`${b} joined`));

  await send(alice, "hello bob");
  await send(bob, "hi alice");
  const evil = "<img src=x onerror=alert(1)>";
  await send(alice, evil);
  const before = [`${a}: hello bob`, `${b}: hi alice`, `${a}: ${evil}`];
  await waitFor("bob has the first three", async () => (await messages(bob)).length === 3);
  assert.deepEqual(await messages(bob), before);
  assert.deepEqual(await messages(alice), before);
  // The injection attempt is text: no element was made from it and nothing ran.
  for (const p of [alice, bob]) {
    assert.equal(await p.locator("#chat-log img").count(), 0);
    assert.deepEqual(p.dialogs, []);
  }

  // Bob drops off the network.
  r.setOffline(true);
  await waitText(bob, "#chat-conn", "reconnecting");
  const missed = ["missed one", "missed two", "missed three"];
  for (const m of missed) await send(alice, m);
  await bob.locator("#chat-panel").screenshot({ path: path.join(OUT, "chat-reconnecting.png") });
  const headsBefore = r.heads.length;
  r.setOffline(false);
  await waitText(bob, "#chat-conn", "live");
  const want = before.concat(missed.map((m) => `${a}: ${m}`));
  await waitFor("bob caught up", async () => (await messages(bob)).length >= want.length);
  // Give a duplicate, if the page or server were to make one, the time to show up.
  await send(bob, "back again");
  await waitFor("alice sees bob is back", async () =>
    (await messages(alice)).includes(`${b}: back again`));
  assert.deepEqual(await messages(bob), want.concat([`${b}: back again`]));
  assert.deepEqual(await messages(alice), want.concat([`${b}: back again`]));
  const resumed = r.heads.slice(headsBefore).find((h) => h.startsWith("GET /chat/stream"));
  assert.ok(resumed, "bob's browser reopened its stream through the relay");
  assert.match(resumed, /\r\nLast-Event-ID: \S+/i, "the reconnect carried Last-Event-ID");

  // Rename and leave are seen by the other side.
  await bob.locator("#chat-rename").fill(`${b}-2`);
  await bob.locator("#chat-rename").press("Enter");
  await waitText(bob, "#chat-me", `${b}-2`);
  await waitFor("rename notice", async () => (await text(alice, "#chat-log")).includes(`${b} is now ${b}-2`));
  await waitFor("renamed in online list", async () => (await online(alice)).includes(`${b}-2`));

  await alice.setViewportSize({ width: 1100, height: 900 });
  await alice.locator("#chat-panel").screenshot({ path: path.join(OUT, "chat-alice.png") });
  await bob.locator("#chat-panel").screenshot({ path: path.join(OUT, "chat-bob.png") });

  await bob.locator("#chat-leave").click();
  await waitFor("join form back", async () => await bob.locator("#join-form").isVisible());
  await waitFor("leave notice", async () => (await text(alice, "#chat-log")).includes(`${b}-2 left`));
  await waitFor("left the online list", async () => !(await online(alice)).includes(`${b}-2`));

  // Phone width: nothing wider than the screen.
  await alice.setViewportSize({ width: 375, height: 800 });
  const overflow = await alice.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `page is ${overflow}px wider than a 375px screen`);
  await alice.screenshot({ path: path.join(OUT, "phone.png"), fullPage: true });

  // Sending faster than the rate limit is refused in words.
  await alice.evaluate(() => {
    const form = document.getElementById("send-form");
    const input = document.getElementById("chat-text");
    for (let i = 0; i < 80; i++) { input.value = `burst ${i}`; form.requestSubmit(); }
  });
  await waitFor("rate-limit error", async () => /Rate limited/.test(await text(alice, "#chat-error")));

  for (const p of [alice, bob]) assert.deepEqual(p.errors, []);
  await alice.context().close();
  await bob.context().close();
  r.close();
});

test("a page cut off before any event reached it still gets what it missed", async () => {
  // Erin talks through the API; she joins first, so Dave's stream carries no event with an id.
  const erin = `erin${process.pid}`;
  const joined = await fetch(`${server.base}/chat/join`, { method: "POST", body: erin });
  assert.equal(joined.status, 201);
  const { token } = await joined.json();
  const say = async (words) => {
    const r = await fetch(`${server.base}/chat/messages`, {
      method: "POST", body: words, headers: { Authorization: `Bearer ${token}` } });
    assert.equal(r.status, 202);
  };
  const r = await relay(server.port);
  const dave = await newPage(`http://127.0.0.1:${r.port}`);
  const d = `dave${process.pid}`;
  await join(dave, d);
  await waitFor("erin online for dave", async () => (await online(dave)).includes(erin));
  r.setOffline(true);
  await waitText(dave, "#chat-conn", "reconnecting");
  await say("while you were out 1");
  await say("while you were out 2");
  const headsBefore = r.heads.length;
  r.setOffline(false);
  await waitText(dave, "#chat-conn", "live");
  await waitFor("dave caught up", async () => (await messages(dave)).length >= 2);
  await say("and now");
  await waitFor("the live one", async () => (await messages(dave)).length >= 3);
  assert.deepEqual(await messages(dave),
    [`${erin}: while you were out 1`, `${erin}: while you were out 2`, `${erin}: and now`]);
  const resumed = r.heads.slice(headsBefore).find((h) => h.startsWith("GET /chat/stream"));
  assert.ok(resumed, "dave's browser reopened its stream through the relay");
  assert.match(resumed, /[?&]last_event_id=\d+|\r\nLast-Event-ID: \d+/i, "the reopen said where to resume");
  await fetch(`${server.base}/chat/leave`, { method: "POST", headers: { Authorization: `Bearer ${token}` } });
  assert.deepEqual(dave.errors, []);
  await dave.context().close();
  r.close();
});

test("screenshots of both panels at phone width", async () => {
  const page = await newPage(server.base, { width: 375, height: 800 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `page is ${overflow}px wider than a 375px screen`);
  await page.locator("#alarm-id").fill(`e2e-phone-${process.pid}`);
  await page.locator("#alarm-id").press("Enter");
  await waitText(page, "#alarm-conn", "live");
  await page.screenshot({ path: path.join(OUT, "page-375.png"), fullPage: true });
  await page.context().close();
});

test("after a server restart both panels say so, come back by themselves, and carry on", async () => {
  const page = await newPage(server.base);
  const id = `e2e-restart-${process.pid}`;
  assert.equal((await fetch(`${server.base}/alarms/${id}`, { method: "PUT", body: "true" })).status, 204);
  await page.locator("#alarm-id").fill(id);
  await page.locator("#alarm-id").press("Enter");
  await waitText(page, "#alarm-state", "ON");
  const name = `carol${process.pid}`;
  await join(page, name);

  await stopServer(server);
  await waitText(page, "#alarm-conn", "reconnecting");
  await waitText(page, "#chat-conn", "reconnecting");
  server = await startServer(server);

  await waitText(page, "#alarm-conn", "live");
  await waitText(page, "#alarm-state", "ON"); // the store outlived the process
  assert.equal((await fetch(`${server.base}/alarms/${id}`, { method: "PUT", body: "false" })).status, 204);
  await waitText(page, "#alarm-state", "OFF");
  // The room lived in the old process: the page rejoins under the same name and says so.
  await waitFor("rejoined notice", async () => (await text(page, "#chat-log")).includes(`rejoined as ${name}`));
  await waitText(page, "#chat-conn", "live");
  await send(page, "still here");
  const users = await (await fetch(`${server.base}/chat/users`)).json();
  assert.ok(users.online.includes(name), `${name} online after the restart: ${JSON.stringify(users)}`);
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

// ---------- With auth on ----------
// A second server started with an HS256 secret file; the test mints its tokens itself (HS256 is
// an HMAC over "header.payload": node's crypto does it, the server verifies with jsonwebtoken).

const SECRET = "e2e test-only secret, long enough for HS256 (>= 32 bytes)";
const b64url = (text) => Buffer.from(text).toString("base64url");
function mint(claims) {
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64url(JSON.stringify(claims));
  const sig = crypto.createHmac("sha256", SECRET).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}
const now = () => Math.floor(Date.now() / 1000);

async function useToken(page, t) {
  await page.locator("#token-panel").waitFor({ state: "visible" });
  await page.locator("#token").fill(t);
  await page.locator("#token").press("Enter");
  await page.locator("#token-panel").waitFor({ state: "hidden" });
}

test("with auth on the page asks for a token on a 401, keeps it in a cookie, and streams, flips and chats with it", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "syncast-e2e-auth-"));
  const secretFile = path.join(dir, "secret");
  fs.writeFileSync(secretFile, SECRET + "\n");
  // No leeway, so a token that expires does so on time.
  const secured = await startServer(undefined, {
    args: ["--jwt-secret-file", secretFile, "--jwt-leeway", "0s"], log: "server-auth.log" });
  try {
    const page = await newPage(secured.base);
    const id = `e2e-auth-${process.pid}`;
    const name = `frank${process.pid}`;
    const rights = { subscribe: ["e2e-auth-*"], publish: ["e2e-auth-*"] };
    assert.equal(await page.locator("#token-panel").isVisible(), false, "no token asked before a 401");

    // The stream is refused with 401: the page says why and asks for a token.
    await page.locator("#alarm-id").fill(id);
    await page.locator("#alarm-id").press("Enter");
    await waitFor("the token panel", async () => await page.locator("#token-panel").isVisible());
    await waitFor("the reason in words", async () => /needs a token/.test(await text(page, "#alarm-error")));
    assert.match(await text(page, "#token-why"), /asks for a token/);
    await page.screenshot({ path: path.join(OUT, "auth-asks-for-token.png"), fullPage: true });

    // Not a token at all: refused in words, nothing stored.
    await page.locator("#token").fill("not a token");
    await page.locator("#token").press("Enter");
    await waitFor("bad token words", async () => /not a token/.test(await text(page, "#token-error")));

    await useToken(page, mint({ sub: name, name, exp: now() + 600, syncast: rights }));
    const cookie = (await page.context().cookies()).find((c) => c.name === "syncast_token");
    assert.ok(cookie, "the token is kept in the syncast_token cookie");
    assert.equal(cookie.sameSite, "Strict");
    // The page watches again by itself; the flip (PUT) goes with the cookie too.
    await waitText(page, "#alarm-conn", "live");
    await waitText(page, "#alarm-state", "OFF");
    await page.locator("#alarm-flip").click();
    await waitText(page, "#alarm-state", "ON");

    // An id the token does not grant: 403, said in words, no token asked.
    await page.locator("#alarm-id").fill(`other-${process.pid}`);
    await page.locator("#alarm-id").press("Enter");
    await waitFor("forbidden words", async () => /does not allow watching/.test(await text(page, "#alarm-error")));
    assert.equal(await page.locator("#token-panel").isVisible(), false);

    // The chat: the name comes from the token, prefilled.
    assert.equal(await page.locator("#chat-name").inputValue(), name);
    await page.locator("#chat-join").click();
    await waitText(page, "#chat-conn", "live");
    await waitText(page, "#chat-me", name);
    // The name is the token's: renaming is not offered (the server refuses it), leaving is.
    assert.equal(await page.locator("#chat-rename").isVisible(), false);
    assert.equal(await page.locator("#chat-leave").isVisible(), true);
    await send(page, "hello under auth");
    await page.locator("#chat-leave").click();
    await waitFor("join form back", async () => await page.locator("#join-form").isVisible());

    // A token that expires in six seconds: both streams end with `expired`, the page asks
    // again, and a fresh token brings both back by themselves.
    await useTokenAgain(page, mint({ sub: name, name, exp: now() + 6, syncast: rights }));
    await page.locator("#alarm-id").fill(id);
    await page.locator("#alarm-id").press("Enter");
    await page.locator("#chat-name").fill(name);
    await page.locator("#chat-join").click();
    await waitText(page, "#alarm-conn", "live");
    await waitText(page, "#chat-conn", "live");
    await waitText(page, "#alarm-conn", "token expired");
    await waitText(page, "#chat-conn", "token expired");
    await waitFor("asked for a fresh token", async () => /expired/.test(await text(page, "#token-why")));
    await page.screenshot({ path: path.join(OUT, "auth-token-expired.png"), fullPage: true });
    await useToken(page, mint({ sub: name, name, exp: now() + 600, syncast: rights }));
    await waitText(page, "#alarm-conn", "live");
    await waitText(page, "#alarm-state", "ON");
    await waitText(page, "#chat-conn", "live");
    await send(page, "still here after a new token");
    assert.deepEqual(page.errors, []);
    assert.deepEqual(page.external, []);
    await page.context().close();
  } finally {
    await stopServer(secured);
    fs.rmSync(secured.dir, { recursive: true, force: true });
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

// Replaces the stored token with `t` without waiting for the server to ask (as a user pasting a
// new one would, through the Forget button and the form).
async function useTokenAgain(page, t) {
  await page.evaluate(() => { document.getElementById("token-panel").hidden = false; });
  await useToken(page, t);
}
