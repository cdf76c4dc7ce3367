// Builds dist/: index.js (ESM, the Connect and protobuf runtimes left to the
// application's bundler), its type declarations, and dalv.bundle.js (one
// minified file with the runtimes, for pages without a bundler and for the
// size check); rules.js and dalv.rules.bundle.js, the opt-in rules check.
import { spawnSync } from "node:child_process";
import { rmSync } from "node:fs";
import { join } from "node:path";
import { build } from "esbuild";

const root = new URL("..", import.meta.url).pathname;
rmSync(join(root, "dist"), { recursive: true, force: true });
const common = { entryPoints: [join(root, "src/index.ts")], bundle: true, format: "esm", target: "es2022", platform: "browser", logLevel: "warning" };
await build({ ...common, outfile: join(root, "dist/index.js"), packages: "external", sourcemap: true });
await build({ ...common, outfile: join(root, "dist/dalv.bundle.js"), minify: true, legalComments: "none", sourcemap: "external" });
// @dalvdb/client/rules, the opt-in check of the write rules: its own file.
const rules = { ...common, entryPoints: [join(root, "src/rules.ts")] };
await build({ ...rules, outfile: join(root, "dist/rules.js"), sourcemap: true });
await build({ ...rules, outfile: join(root, "dist/dalv.rules.bundle.js"), minify: true, legalComments: "none" });
// The shop example's page script (examples/shop), with the SDK, into the
// example's own folder: it is no part of the package.
await build({
  ...common,
  entryPoints: [join(root, "../examples/shop/web/shop.ts")],
  outfile: join(root, "../examples/shop/web/dist/shop.js"),
  alias: { "@dalvdb/client": join(root, "src/index.ts") },
  minify: true,
  sourcemap: true,
});
const tsc = spawnSync(join(root, "node_modules/.bin/tsc"), ["-p", "tsconfig.build.json"], { cwd: root, stdio: "inherit" });
process.exit(tsc.status ?? 1);
