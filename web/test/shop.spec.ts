// The shop example (examples/shop) end to end: a real `dalv serve`, the
// shop's backend and page as their own processes, and three Chromium
// profiles: two devices of alice and one of bob. Each use case the shop
// shows is asserted on the rendered page. The backend is killed and started
// again in the middle; screenshots land in web/test-results/.
import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import { execFileSync, spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { after, before, test } from "node:test";
import type { BrowserContext, Page } from "playwright-core";
import { launch, newProfile } from "./chromium.js";
import type { DalvServer } from "./dalv-server.js";
import { b64, backendKey, jwtSecret, startServer, waitFor } from "./dalv-server.js";

const repo = resolve(import.meta.dirname, "../../..");
const results = resolve(import.meta.dirname, "../../test-results");
const work = mkdtempSync(join(tmpdir(), "dalv-shop-test-"));
const shopBin = join(work, "shop");
const cursor = join(work, "backend.cursor");
let srv: DalvServer;
let page: ChildProcess;
let backend: ChildProcess | undefined;
let shopURL: string;
const contexts: BrowserContext[] = [];
const profiles: string[] = [];

/** run starts the shop binary in mode and resolves with it and the first line matching re's group. */
function run(mode: string, args: string[], env: Record<string, string>, re?: RegExp): Promise<[ChildProcess, string]> {
  const p = spawn(shopBin, [mode, "-server", srv.url, ...args], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  p.stderr?.on("data", (b: Buffer) => (stderr += b.toString()));
  if (!re) return Promise.resolve([p, ""]);
  return new Promise((res, rej) => {
    createInterface({ input: p.stdout! }).on("line", (line) => {
      const m = re.exec(line);
      if (m?.[1]) res([p, m[1]]);
    });
    p.on("exit", (code) => rej(new Error(`shop ${mode} exited (${code}): ${stderr}`)));
  });
}

async function startBackend(): Promise<void> {
  [backend] = await run("backend", ["-cursor", cursor], { DALV_BACKEND_KEY: backendKey });
}

async function killBackend(): Promise<void> {
  const b = backend;
  if (!b || b.exitCode !== null) return;
  const exited = new Promise((r) => b.once("exit", r));
  b.kill("SIGKILL");
  await exited;
}

before(async () => {
  execFileSync("go", ["build", "-o", shopBin, "./examples/shop"], { cwd: repo, stdio: "inherit" });
  srv = await startServer(["--shared", "catalog", "--heartbeat", "1s", "--rate-limit", "-1"]);
  [page, shopURL] = await run("page", ["-addr", "127.0.0.1:0", "-dist", join(repo, "examples/shop/web/dist")], { DALV_JWT_SECRET: jwtSecret }, /^shop on (http:\S+)/);
  await startBackend();
});

after(async () => {
  for (const c of contexts) await c.close().catch(() => undefined);
  await killBackend();
  page?.kill("SIGTERM");
  await srv?.stop();
  for (const dir of [work, ...profiles]) rmSync(dir, { recursive: true, force: true });
});

/** device opens the shop for user in a fresh Chromium profile. */
async function device(user: string): Promise<{ ctx: BrowserContext; p: Page }> {
  const dir = newProfile();
  profiles.push(dir);
  const ctx = await launch(dir);
  contexts.push(ctx);
  const p = await ctx.newPage();
  await p.goto(`${shopURL}/?user=${user}`);
  await p.waitForSelector("body[data-ready=true]");
  return { ctx, p };
}

const texts = (p: Page, sel: string) => p.locator(sel).allTextContents();
const has = async (p: Page, sel: string, want: string) => (await texts(p, sel)).some((t) => t.includes(want));
const until = (what: string, cond: () => Promise<boolean>) => waitFor(what, cond, 15_000);
const putJSON = (key: string, v: unknown) => ({ kind: "OP_KIND_PUT", key, value: { scalar: b64(JSON.stringify(v)) } });

test("the shop: every use case on the page of two devices of alice and one of bob", { timeout: 300_000 }, async (t) => {
  const a1 = await device("alice");
  const a2 = await device("alice");
  const b = await device("bob");
  const all = [a1.p, a2.p, b.p];

  await t.test("product categories: the shared catalog, and a category the backend adds, on every page", async () => {
    for (const p of all) await until("the catalog", () => has(p, "#categories li", "Mugs"));
    assert.ok(await has(a1.p, "#products .product", "Blue mug"));
    await srv.commitShared("catalog", [putJSON("cat/garden", { name: "Garden" }), putJSON("product/rake", { name: "Rake", price: 15, cat: "garden" })]);
    for (const p of all) await until("the new category and its product", async () => (await has(p, "#categories li", "Garden")) && (await has(p, "#products .product", "Rake")));
  });

  await t.test("preferences: theme and language, applied at once and on the other device", async () => {
    await a1.p.selectOption("#theme", "dark");
    assert.equal(await a1.p.getAttribute("html", "data-theme"), "dark", "applied at once on the device");
    await until("dark on the other device", async () => (await a2.p.getAttribute("html", "data-theme")) === "dark");
    await a1.p.selectOption("#language", "fr");
    await until("French on the other device", async () => (await a2.p.textContent("#cart-section h2")) === "Panier");
    assert.equal(await b.p.getAttribute("html", "data-theme"), "light", "bob's preferences are his own");
    await a2.p.selectOption("#language", "en");
    await until("English again on the first device", async () => (await a1.p.textContent("#cart-section h2")) === "Cart");
  });

  await t.test("cart and profile: both devices edit offline, then converge; the offline page still reads and says what waits", async () => {
    await a1.ctx.setOffline(true);
    await a2.ctx.setOffline(true);
    await a1.p.click('[data-add="mug-blue"]');
    await a1.p.click('[data-more="mug-blue"]');
    await a2.p.click('[data-add="novel"]');
    await a1.p.fill('#profile [name="name"]', "Alice Martin");
    await a1.p.click("#profile button");
    await a2.p.fill('#profile [name="city"]', "Lyon");
    await a2.p.click("#profile button");
    await until("the first device knows it is offline", () => a1.p.isVisible("#offline-note"));
    assert.match((await a1.p.textContent("#offline-note")) ?? "", /Orders, followers and the timeline will update when you are back online/);
    assert.ok(await has(a1.p, "#products .product", "Blue mug"), "the catalog stays readable offline");
    assert.deepEqual(await texts(a1.p, "#cart li .qty"), ["× 2"]);
    assert.ok(!(await has(a1.p, "#cart li", "A novel")), "the other device's offline write is not here yet");
    await a1.ctx.setOffline(false);
    await a2.ctx.setOffline(false);
    for (const p of [a1.p, a2.p]) {
      await until("both carts", async () => (await has(p, "#cart li", "Blue mug")) && (await has(p, "#cart li", "A novel")));
      await until("both profile fields", async () => (await p.inputValue('#profile [name="name"]')) === "Alice Martin" && (await p.inputValue('#profile [name="city"]')) === "Lyon");
    }
    assert.deepEqual((await texts(a2.p, "#cart li .qty")).sort(), ["× 1", "× 2"]);
    assert.equal(await a1.p.isVisible("#offline-note"), false);
  });

  await t.test("saved products: a heart on one device, the list on the other", async () => {
    await a1.p.click('[data-save="atlas"]');
    await until("the heart on", async () => (await a1.p.getAttribute('[data-save="atlas"]', "aria-pressed")) === "true");
    await until("saved on the other device", () => has(a2.p, "#saved li", "World atlas"));
  });

  await t.test("search history: on every device, the last 20", async () => {
    const search = async (term: string) => {
      await a1.p.fill("#search", term);
      await a1.p.press("#search", "Enter");
    };
    await search("mug");
    assert.deepEqual(await texts(a1.p, "#products .product .name"), ["Blue mug", "Red mug"]);
    await until("the search on the other device", () => has(a2.p, "#searches li", "mug"));
    for (let i = 1; i <= 20; i++) await search(`q${i}`);
    await until("the last 20 on the other device", async () => (await texts(a2.p, "#searches li")).join(",") === Array.from({ length: 20 }, (_, i) => `q${20 - i}`).join(","));
    assert.equal((await texts(a1.p, "#searches li")).length, 20);
    await search("");
  });

  await t.test("order history: checkout while the backend is down; it starts again and places exactly one order", async () => {
    await killBackend();
    await a1.p.click("#checkout");
    await until("the request is pending", () => a1.p.isVisible("#checkout-pending"));
    await until("the request reached the server", async () => ((await srv.get("alice", "checkout/requests"))?.value?.list?.items ?? []).length === 1);
    await startBackend();
    for (const p of [a1.p, a2.p]) {
      await until("the order on both devices", async () => (await texts(p, "#orders li")).length === 1);
      await until("an empty cart", async () => (await texts(p, "#cart li")).length === 0);
    }
    const order = (await texts(a2.p, "#orders li"))[0] ?? "";
    assert.match(order, /Blue mug × 2/);
    assert.match(order, /A novel × 1/);
    assert.equal(await a1.p.isVisible("#checkout-pending"), false);
  });

  await t.test("followers: bob follows alice, and alice sees him live on both devices", async () => {
    await b.p.click('[data-follow="alice"]');
    await until("following, on bob's page", async () => (await b.p.getAttribute('[data-follow="alice"]', "aria-pressed")) === "true");
    for (const p of [a1.p, a2.p]) await until("bob among alice's followers", () => has(p, "#followers li", "bob"));
    // The backend handles the feed in order: having handled bob's follow,
    // it has handled alice's checkout as often as it ever will.
    const orders = await a1.p.evaluate(() => (window as unknown as { shop: { r: { list(p: string): unknown[] } } }).shop.r.list("sys/orders/").length);
    assert.equal(orders, 1, "one checkout request, one order, after the backend's restart");
  });

  await t.test("timeline: alice posts, and bob's timeline shows it live", async () => {
    await a1.p.fill("#post-text", "Hello from Alice");
    await a1.p.click("#post button");
    await until("the post on bob's timeline", () => has(b.p, "#timeline li", "alice: Hello from Alice"));
    assert.equal((await texts(a1.p, "#timeline li")).length, 0, "alice follows nobody: her own timeline is empty");
  });

  mkdirSync(results, { recursive: true });
  await a1.p.screenshot({ path: join(results, "shop-alice.png"), fullPage: true });
  await b.p.screenshot({ path: join(results, "shop-bob.png"), fullPage: true });
});
