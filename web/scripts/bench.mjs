// The browser SDK's figures, measured in headless Chromium against a local
// `dalv serve` (3 runs, each on a fresh profile; medians printed):
// read of a synced key with 10,000 keys, durable local write beside a bare
// strict IndexedDB put, open to first read, first sync of 10,000 keys, and
// the bundle's size.
import { spawnSync } from "node:child_process";
import { readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { gzipSync } from "node:zlib";

const root = new URL("..", import.meta.url).pathname;
const tsc = spawnSync(join(root, "node_modules/.bin/tsc"), ["-p", "tsconfig.json"], { cwd: root, stdio: "inherit" });
if (tsc.status !== 0) process.exit(1);
const { startServer, newUser, b64 } = await import(join(root, "build/test/dalv-server.js"));
const { serveStatic } = await import(join(root, "build/test/static-server.js"));
const { launch, newProfile } = await import(join(root, "build/test/chromium.js"));

const KEYS = 10_000;
const RUNS = 3;
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

const stat = await serveStatic([join(root, "dist"), join(root, "test")]);
const srv = await startServer(["--cors-origin", stat.origin, "--rate-limit", "-1"]);
const results = [];
try {
  for (let run = 1; run <= RUNS; run++) {
    const user = newUser();
    for (let i = 0; i < KEYS; i += 1000) {
      const ops = [];
      for (let j = i; j < i + 1000; j++) ops.push({ kind: "OP_KIND_PUT", key: `k/${String(j).padStart(5, "0")}`, value: { scalar: b64(JSON.stringify({ n: j, name: `item ${j}`, tags: ["a", "b"] })) } });
      await srv.commit(user, ops);
    }
    const dir = newProfile();
    const ctx = await launch(dir);
    try {
      const page = await ctx.newPage();
      await page.goto(`${stat.origin}/bench.html`);
      await page.waitForFunction(() => window.ready === true);
      const sync = await page.evaluate(([u, t, k]) => window.firstSync(u, t, k), [srv.url, srv.token(user), KEYS]);
      const open = await page.evaluate(() => window.openToFirstRead());
      const read = await page.evaluate(() => window.read());
      const write = await page.evaluate((n) => window.write(n), 30);
      const r = { read, open, sync, writeRatio: write.sdk / write.floor, write: write.sdk, floor: write.floor };
      results.push(r);
      console.log(`run ${run}: read ${r.read.toFixed(2)} µs, write ${r.write.toFixed(2)} ms vs bare put ${r.floor.toFixed(2)} ms (${r.writeRatio.toFixed(2)}×), open ${r.open.toFixed(0)} ms, first sync ${r.sync.toFixed(0)} ms`);
    } finally {
      await ctx.close();
      rmSync(dir, { recursive: true, force: true });
    }
  }
} finally {
  await srv.stop();
  stat.server.closeAllConnections();
  stat.server.close();
}
const gz = gzipSync(readFileSync(join(root, "dist/dalv.bundle.js")), { level: 9 }).length / 1024;
const m = (k) => median(results.map((r) => r[k]));
console.log(`
| figure | median of ${RUNS} runs | target |
| --- | --- | --- |
| read of a synced key, ${KEYS} keys in the replica | ${m("read").toFixed(2)} µs | < 5 µs |
| durable local write (strict IndexedDB transaction) | ${m("writeRatio").toFixed(2)}× one bare strict put (${m("write").toFixed(2)} ms vs ${m("floor").toFixed(2)} ms) | ≤ 1.3× |
| open of a replica of ${KEYS} keys, to first read | ${m("open").toFixed(0)} ms | < 150 ms |
| first sync of ${KEYS} keys from a local server, to exposed state | ${m("sync").toFixed(0)} ms | < 1 s |
| minified + gzipped bundle with its Connect and protobuf runtime | ${gz.toFixed(1)} KB | ≤ 45 KB |`);
