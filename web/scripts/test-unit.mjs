// Runs the Node unit tests (compiled by tsc into build/) and ends with one
// line of counts.
import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { join } from "node:path";

const root = new URL("..", import.meta.url).pathname;
const tsc = spawnSync(join(root, "node_modules/.bin/tsc"), ["-p", "tsconfig.json"], { cwd: root, stdio: "inherit" });
if (tsc.status !== 0) process.exit(1);
const files = readdirSync(join(root, "build/src")).filter((f) => f.endsWith(".spec.js")).map((f) => join("build/src", f));
const r = spawnSync(process.execPath, ["--test", "--test-concurrency=1", "--test-reporter=spec", ...files], { cwd: root, encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] });
process.stdout.write(r.stdout);
const count = (k) => Number(new RegExp(`^ℹ ${k} (\\d+)`, "m").exec(r.stdout)?.[1] ?? 0);
console.log(`web unit tests: ${count("pass")} passed, ${count("fail")} failed`);
process.exit(r.status === 0 ? 0 : 1);
