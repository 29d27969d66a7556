// Drives the xchanged dashboard in a real, headless Chromium (Debian's, by executablePath; Playwright
// downloads no browser), for integration/test_dashboard.py.
//
//   node dashboard_e2e.cjs URL CHROMIUM USER_DATA_DIR
//
// It speaks JSON lines: it writes {"event": "ready", ...} once the page shows the cluster, then
// answers each command read from stdin with one line:
//   {"expect": [ids], "timeout_s": n}  -> {"event": "seen", "first": {id: state}, "final": {id: state}}
//        after every id has a row in the task table (first) and every row shows a terminal state (final);
//        with "until": "present", as soon as every id has a row; with "cluster": true, after ticking
//        "every manager's" (the cluster-wide list)
//   {"detail": id, "timeout_s": n}     -> {"event": "detail", "state", "attempts", "parts", "text"}
//        after a click on the task's row shows its attempts (and, for a composite, its parts)
//   {"screenshot": path}               -> {"event": "screenshot", "path"}
//   {"quit": true}                     -> closes the browser and exits 0
// Any failure: {"event": "error", "error": message} and exit 1. Console errors of the page are
// reported in every answer ("console").
"use strict";

const readline = require("readline");
const { chromium } = require("playwright-core");

const [url, executablePath, userDataDir] = process.argv.slice(2);
const TERMINAL = ["succeeded", "failed", "cancelled"];
const consoleErrors = [];

function say(doc) {
  process.stdout.write(JSON.stringify({ ...doc, console: consoleErrors.splice(0) }) + "\n");
}

async function expectTasks(page, ids, timeoutMs, untilPresent) {
  const rowsOf = (list) => page.evaluate((wanted) => {
    const out = {};
    for (const id of wanted) {
      const row = document.querySelector(`#tasks tr[data-task-id="${CSS.escape(id)}"]`);
      if (row) out[id] = row.dataset.state;
    }
    return out;
  }, list);
  const deadline = Date.now() + timeoutMs;
  let first = null;
  for (;;) {
    const seen = await rowsOf(ids);
    if (first === null && Object.keys(seen).length === ids.length) first = seen;
    if (first !== null && untilPresent) return { first, final: seen };
    if (first !== null && ids.every((id) => TERMINAL.includes(seen[id]))) return { first, final: seen };
    if (Date.now() > deadline) {
      throw new Error(`after ${timeoutMs} ms the page shows ${JSON.stringify(seen)} of ${ids.length} tasks`);
    }
    await page.waitForTimeout(100);      // the page itself refreshes every second
  }
}

async function detail(page, id, timeoutMs) {
  await page.click(`#tasks tr[data-task-id="${id}"]`);
  await page.waitForFunction((wanted) => {
    const body = document.getElementById("detail-body");
    return body.dataset.task === wanted && body.querySelector("table.attempts tbody tr");
  }, id, { timeout: timeoutMs });
  return page.evaluate(() => {
    const body = document.getElementById("detail-body");
    return { state: body.dataset.state, attempts: body.querySelectorAll("table.attempts tbody tr").length,
             parts: body.querySelectorAll("table.parts tbody tr").length, text: body.innerText };
  });
}

async function main() {
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath, headless: true, viewport: { width: 1440, height: 1500 },
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  try {
    const page = context.pages()[0] || await context.newPage();
    page.on("console", (msg) => { if (msg.type() === "error") consoleErrors.push(msg.text()); });
    page.on("pageerror", (err) => consoleErrors.push(String(err)));
    const requests = [];
    page.on("request", (req) => requests.push(req.url()));
    await page.goto(url, { waitUntil: "load" });
    await page.waitForSelector("#peers article[data-health]", { timeout: 30000 });
    const peers = await page.$$eval("#peers article", (cards) => cards.map((c) => [c.dataset.peer, c.dataset.health]));
    const origin = new URL(url).origin;
    say({ event: "ready", peers, foreign: requests.filter((r) => !r.startsWith(origin)) });
    const lines = readline.createInterface({ input: process.stdin });
    for await (const line of lines) {
      const cmd = JSON.parse(line);
      if (cmd.quit) break;
      if (cmd.cluster) await page.check("#cluster");
      if (cmd.expect) {
        say({ event: "seen", ...await expectTasks(page, cmd.expect, (cmd.timeout_s || 60) * 1000,
                                                   cmd.until === "present") });
      }
      else if (cmd.detail) say({ event: "detail", ...await detail(page, cmd.detail, (cmd.timeout_s || 30) * 1000) });
      else if (cmd.screenshot) {
        await page.screenshot({ path: cmd.screenshot, fullPage: true });
        say({ event: "screenshot", path: cmd.screenshot,
              foreign: requests.filter((r) => !r.startsWith(origin)) });
      }
    }
  } finally {
    await context.close();
  }
}

main().then(() => process.exit(0), (err) => { say({ event: "error", error: String(err && err.stack || err) });
  process.exit(1); });
