// Checks the budget: the minified, gzipped SDK with its Connect and
// protobuf runtimes (dist/dalv.bundle.js, from npm run build) is at most 45 KB.
import { readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";

const limit = 45 * 1024;
const file = new URL("../dist/dalv.bundle.js", import.meta.url);
const raw = readFileSync(file);
const gz = gzipSync(raw, { level: 9 }).length;
const kb = (n) => (n / 1024).toFixed(1);
console.log(`dist/dalv.bundle.js: ${kb(raw.length)} KB minified, ${kb(gz)} KB gzipped (budget ${kb(limit)} KB)`);
if (gz > limit) {
  console.error(`bundle over budget by ${kb(gz - limit)} KB`);
  process.exit(1);
}
