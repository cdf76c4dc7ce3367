// Runs the browser tests in headless Chromium (compiled by tsc into
// build/), after making sure Chromium is there: Debian's package is
// installed when this runs as root, else the run fails saying how.
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";

const root = new URL("..", import.meta.url).pathname;
const chromium = process.env.DALV_CHROMIUM ?? "/usr/bin/chromium";
if (!existsSync(chromium)) {
  if (process.getuid?.() === 0) {
    console.log("Chromium is missing: installing Debian's chromium package");
    const r = spawnSync("sh", ["-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium"], { stdio: "inherit" });
    if (r.status !== 0 || !existsSync(chromium)) {
      console.error(`web browser tests: Chromium could not be installed; install it with "sudo apt-get install -y chromium" (or set DALV_CHROMIUM)`);
      process.exit(1);
    }
  } else {
    console.error(`web browser tests: no Chromium at ${chromium}; install it with "sudo apt-get install -y chromium" (or set DALV_CHROMIUM)`);
    process.exit(1);
  }
}
const tsc = spawnSync(join(root, "node_modules/.bin/tsc"), ["-p", "tsconfig.json"], { cwd: root, stdio: "inherit" });
if (tsc.status !== 0) process.exit(1);
if (!existsSync(join(root, "dist/dalv.bundle.js"))) {
  console.error("web browser tests: dist/dalv.bundle.js is missing: run npm run build first");
  process.exit(1);
}
// Each spec file runs in a process of its own, and the timeout bounds the
// whole file as well as each test: five minutes, so a slow machine slows
// the files down without cutting them off. The tests wait on conditions
// with deadlines of their own.
const r = spawnSync(process.execPath, ["--test", "--test-concurrency=1", "--test-timeout=300000", "--test-reporter=spec", "build/test/browser.spec.js", "build/test/shop.spec.js"], { cwd: root, encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] });
process.stdout.write(r.stdout);
const count = (k) => Number(new RegExp(`^ℹ ${k} (\\d+)`, "m").exec(r.stdout)?.[1] ?? 0);
console.log(`web browser tests: ${count("pass")} passed, ${count("fail")} failed`);
process.exit(r.status === 0 ? 0 : 1);
