// Browser tests: the SDK in headless Chromium (one browser at a time)
// against a real `dalv serve`, pages served from another origin.
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import type { Server } from "node:http";
import { rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, test } from "node:test";
import type { BrowserContext, Page } from "playwright-core";
import { launch, newProfile } from "./chromium.js";
import type { DalvServer } from "./dalv-server.js";
import { startCutProxy } from "./cut-proxy.js";
import { b64, newUser, startServer, waitFor } from "./dalv-server.js";
import { serveStatic } from "./static-server.js";

const web = resolve(import.meta.dirname, "../..");
let srv: DalvServer;
let stat: { server: Server; origin: string };
const profiles: string[] = [];

before(async () => {
  stat = await serveStatic([join(web, "dist"), join(web, "test")]);
  srv = await startServer(["--cors-origin", stat.origin, "--heartbeat", "1s"]);
});
after(async () => {
  await srv?.stop();
  stat?.server.closeAllConnections();
  stat?.server.close();
  for (const p of profiles) rmSync(p, { recursive: true, force: true });
});

function profile(): string {
  const p = newProfile();
  profiles.push(p);
  return p;
}

async function tab(ctx: BrowserContext, user: string, o: Record<string, unknown> = {}): Promise<Page> {
  const page = await ctx.newPage();
  await page.goto(`${stat.origin}/page.html`);
  await page.waitForFunction(() => (window as unknown as { ready?: boolean }).ready === true);
  await page.evaluate((o) => (window as any).openR(o), { name: "app", serverUrl: srv.url, tokenValue: srv.token(user), retryMinMs: 50, retryMaxMs: 500, ...o });
  return page;
}

const status = (p: Page) => p.evaluate(() => {
  const s = (window as any).r.status;
  return { online: s.online as boolean, leader: s.leader as boolean, pending: s.pending as number, watching: s.watching as boolean, conflicts: s.conflicts as number };
});
const text = (p: Page, k: string) => p.evaluate((k) => (window as any).text(k), k) as Promise<unknown>;
const serverText = async (user: string, k: string) => {
  const v = (await srv.get(user, k))?.value;
  if (!v) return undefined;
  if (v.scalar !== undefined) return Buffer.from(v.scalar, "base64").toString();
  return (v.list?.items ?? []).map((x) => Buffer.from(x, "base64").toString());
};
const put = (key: string, s: string) => ({ kind: "OP_KIND_PUT", key, value: { scalar: b64(s) } });

async function leaderOf(pages: Page[]): Promise<Page> {
  let found: Page | undefined;
  await waitFor("exactly one leader", async () => {
    const ls = await Promise.all(pages.map(async (p) => (await status(p)).leader));
    found = ls.filter(Boolean).length === 1 ? pages[ls.indexOf(true)] : undefined;
    return found !== undefined;
  }, 5000);
  return found as Page;
}

test("four tabs: one sync loop and one Watch; a follower's write reaches the server and the other tabs; the leader closed, then crashed: another takes over within 2 s and pushes what is pending", async () => {
  const user = newUser();
  const ctx = await launch(profile());
  try {
    const pages: Page[] = [];
    for (let i = 0; i < 4; i++) pages.push(await tab(ctx, user));
    let leader = await leaderOf(pages);
    await waitFor("the leader watches", async () => (await status(leader)).watching);
    await waitFor("one Watch stream on the server", async () => (await srv.metric("dalv_device_watches")) === 1);
    const followers = pages.filter((p) => p !== leader);
    // Every tab reads and writes; the write reaches the server and the others.
    await followers[0]!.evaluate(() => (window as any).r.put("from/follower", "hello"));
    await waitFor("server has the follower's write", async () => (await serverText(user, "from/follower")) === "hello");
    for (const p of pages) await waitFor("every tab sees it", async () => (await text(p, "from/follower")) === "hello");
    assert.equal(await srv.metric("dalv_device_watches"), 1, "still one Watch");
    // A backend change reaches every tab through the one watch.
    await srv.commit(user, [put("from/backend", "b1")]);
    for (const p of pages) await waitFor("every tab sees the backend change", async () => (await text(p, "from/backend")) === "b1");

    // The leader closes: another takes over within 2 s and pushes a write made meanwhile.
    let rest = pages.filter((p) => p !== leader);
    await leader.close();
    const t0 = Date.now();
    await rest[0]!.evaluate(() => (window as any).r.put("after/close", "1"));
    leader = await leaderOf(rest);
    await waitFor("the new leader pushed", async () => (await serverText(user, "after/close")) === "1", 2000);
    assert.ok(Date.now() - t0 < 2000, `takeover after close took ${Date.now() - t0} ms`);

    // The leader's page crashes.
    rest = rest.filter((p) => p !== leader);
    await rest[0]!.evaluate(() => (window as any).r.put("after/crash", "1")); // pending until a leader pushes it
    const cdp = await ctx.newCDPSession(leader);
    const t1 = Date.now();
    cdp.send("Page.crash").catch(() => undefined);
    await new Promise<void>((r) => leader.once("crash", () => r()));
    await rest[1]!.evaluate(() => (window as any).r.put("after/crash2", "2"));
    const next = await leaderOf(rest);
    await waitFor("the next leader pushed", async () => (await serverText(user, "after/crash")) === "1" && (await serverText(user, "after/crash2")) === "2", 2000);
    assert.ok(Date.now() - t1 < 2000, `takeover after crash took ${Date.now() - t1} ms`);
    await waitFor("one Watch again", async () => (await srv.metric("dalv_device_watches")) === 1);
    assert.ok((await status(next)).leader);
  } finally {
    await ctx.close();
  }
});

// offlineReport says, for the offline test when writes went missing, what
// the replica's database queues, what reads show and what the server has.
async function offlineReport(p: Page, user: string): Promise<string> {
  const queue = await p.evaluate(() => new Promise<string>((res) => {
    const o = indexedDB.open("app");
    o.onsuccess = () => {
      const all = o.result.transaction("queue").objectStore("queue").getAll();
      all.onsuccess = () => {
        o.result.close();
        res(JSON.stringify(all.result.map((b: { seq: number; ops: { kind: string; key: string }[] }) => [b.seq, b.ops.map((op) => `${op.kind} ${op.key}`)])));
      };
    };
    o.onerror = () => res(String(o.error));
  }));
  const lastError = await p.evaluate(() => String((window as any).r.status.lastError));
  return `queue ${queue}; reads show cart ${JSON.stringify(await text(p, "cart"))}; the server has prefs/theme ${JSON.stringify(await serverText(user, "prefs/theme"))}, cart ${JSON.stringify(await serverText(user, "cart"))}; last error ${lastError}`;
}

test("offline: writes queue, survive a reload, and flush when back online", async () => {
  const user = newUser();
  const ctx = await launch(profile());
  // The page speaks to the server through a proxy that the test cuts:
  // while it is cut, the server is unreachable for real.
  const proxy = await startCutProxy(srv.url);
  try {
    const p = await tab(ctx, user, { serverUrl: proxy.url });
    await waitFor("online", async () => (await status(p)).online).catch(async (e) => {
      throw new Error(`${e}: ${await p.evaluate(() => String((window as any).r.status.lastError))}`);
    });
    await ctx.setOffline(true);
    await proxy.cut();
    await p.evaluate(async () => {
      const r = (window as any).r;
      await r.putJSON("prefs/theme", "dark");
      await r.listAdd("cart", "apple");
      await r.listAdd("cart", "pear");
    });
    assert.equal((await status(p)).pending, 3);
    // The page reloads while the server stays unreachable: the network is
    // back for the page itself (as an app's service worker would serve it)
    // but the server's port refuses connections.
    await ctx.setOffline(false);
    await p.reload();
    await p.waitForFunction(() => (window as any).ready === true);
    await p.evaluate((o) => (window as any).openR(o), { name: "app", serverUrl: proxy.url, tokenValue: srv.token(user), retryMinMs: 50, retryMaxMs: 300 });
    const reloaded = await status(p);
    if (reloaded.pending !== 3) {
      assert.fail(`pending writes survive the reload: ${reloaded.pending} pending, want 3; ${await offlineReport(p, user)}`);
    }
    assert.deepEqual(await text(p, "cart"), ["apple", "pear"]);
    await waitFor("offline is reported", async () => !(await status(p)).online);
    assert.equal(await serverText(user, "cart"), undefined);
    assert.equal(await serverText(user, "prefs/theme"), undefined);
    await proxy.restore();
    await waitFor("flushed", async () => (await status(p)).pending === 0 && (await status(p)).online, 5000);
    assert.deepEqual(await serverText(user, "cart"), ["apple", "pear"]);
    assert.equal(await serverText(user, "prefs/theme"), '"dark"');
  } finally {
    await ctx.close();
    await proxy.close();
  }
});

test("a newer package opening the replica in another tab: the old tab is told to reload, its pending write is kept, and the old code refuses the upgraded replica", async () => {
  const user = newUser();
  const ctx = await launch(profile());
  try {
    const old = await tab(ctx, user, { name: "upgrade", autoStart: false });
    await old.evaluate(() => (window as any).r.put("kept", "before the upgrade"));
    assert.equal((await status(old)).pending, 1);
    // The other tab runs a newer package: it opens the database at the
    // next format version (this package's is 2), which Chromium makes wait
    // on the old tab.
    const newer = await ctx.newPage();
    await newer.goto(`${stat.origin}/page.html`);
    const pending = await newer.evaluate(() => new Promise<number>((res, rej) => {
      const q = indexedDB.open("upgrade", 3);
      q.onsuccess = () => {
        const all = q.result.transaction("queue").objectStore("queue").getAll();
        all.onsuccess = () => { q.result.close(); res(all.result.length); };
      };
      q.onerror = () => rej(q.error);
    }));
    assert.equal(pending, 1, "the old tab's pending write is in the upgraded database");
    await waitFor("the old tab is told to reload", () => old.evaluate(() => (window as any).outdated === true));
    const code = await old.evaluate(async () => {
      try {
        await (window as any).r.put("after", "x");
        return "written";
      } catch (e) {
        return (e as { code?: string }).code;
      }
    });
    assert.equal(code, "closed", "the old tab writes nothing more");
    // The old code, reloaded before the new one is served, refuses the
    // upgraded replica rather than misread it.
    await old.reload();
    await old.waitForFunction(() => (window as any).ready === true);
    const refused = await old.evaluate(async () => {
      try {
        await (window as any).dalv.openReplica({ name: "upgrade" });
        return "opened";
      } catch (e) {
        return (e as { code?: string }).code;
      }
    });
    assert.equal(refused, "outdated");
  } finally {
    await ctx.close();
  }
});

test("each resolver against a concurrent backend edit; a deferred conflict settled later", async () => {
  const ctx = await launch(profile());
  try {
    const cases = [
      { resolverName: "serverWins", want: { a: 1, b: 3 } },
      { resolverName: "clientWins", want: { a: 2, b: 1 } },
      { resolverName: "mergeJSON", want: { a: 2, b: 3 } },
      { resolverName: "custom", want: { custom: "doc" } },
      { resolverName: "defer", want: { a: 1, b: 3 } },
    ];
    for (const c of cases) {
      const user = newUser();
      const p = await tab(ctx, user, { name: `resolver-${c.resolverName}`, resolverName: c.resolverName, autoStart: false });
      await p.evaluate(async () => {
        const r = (window as any).r;
        await r.putJSON("doc", { a: 1, b: 1 });
        await r.sync();
        await r.putJSON("doc", { a: 2, b: 1 });
      });
      await srv.commit(user, [put("doc", JSON.stringify({ a: 1, b: 3 }))]);
      await p.evaluate(() => (window as any).r.sync());
      assert.deepEqual(await p.evaluate(() => (window as any).r.getJSON("doc")), c.want, c.resolverName);
      assert.deepEqual(JSON.parse((await serverText(user, "doc")) as string), c.want, `${c.resolverName}: server`);
      if (c.resolverName === "defer") {
        assert.equal((await status(p)).conflicts, 1);
        await p.evaluate(async () => {
          const r = (window as any).r;
          const d = (window as any).dalv;
          const c = r.conflicts()[0];
          const local = JSON.parse(new TextDecoder().decode(c.local.scalar));
          const remote = JSON.parse(new TextDecoder().decode(c.remote.scalar));
          await r.settle("doc", d.use({ scalar: new TextEncoder().encode(JSON.stringify({ ...remote, a: local.a, settled: true })) }));
          await r.sync();
        });
        assert.deepEqual(JSON.parse((await serverText(user, "doc")) as string), { a: 2, b: 3, settled: true });
        assert.equal((await status(p)).conflicts, 0);
      }
      await p.close();
    }
  } finally {
    await ctx.close();
  }
});

test("a resolved write survives killing the browser process and relaunching on the same profile", async () => {
  const user = newUser();
  const dir = profile();
  let ctx = await launch(dir);
  let p: Page;
  try {
    p = await tab(ctx, user, { autoStart: false });
    await p.evaluate(async () => {
      const r = (window as any).r;
      await r.put("durable/k", "written");
      await r.listAdd("durable/l", "x");
    });
  } catch (e) {
    await ctx.close();
    throw e;
  }
  // SIGKILL the browser: no chance to flush anything the promise did not cover.
  const pids = spawnSync("pgrep", ["-f", dir], { encoding: "utf8" }).stdout.split("\n").filter(Boolean).map(Number);
  assert.ok(pids.length > 0, "the browser's processes are found by their profile directory");
  for (const pid of pids) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
  await ctx.close().catch(() => undefined);
  ctx = await launch(dir);
  try {
    p = await tab(ctx, user);
    assert.equal(await text(p, "durable/k"), "written");
    assert.deepEqual(await text(p, "durable/l"), ["x"]);
    await waitFor("reaches the server", async () => (await serverText(user, "durable/k")) === "written");
  } finally {
    await ctx.close();
  }
});

test("two browser profiles and a Go SDK replica converge after concurrent offline edits of lists, JSON objects and scalars", async () => {
  const user = newUser();
  const goBin = process.env.DALV_GOREPLICA ?? join(tmpdir(), "dalv-web-goreplica");
  execFileSync("go", ["build", "-o", goBin, "./web/test/goreplica"], { cwd: resolve(web, ".."), stdio: "inherit" });
  const goFile = join(profile(), "go.replica");
  const goRun = (...cmds: string[]) => execFileSync(goBin, [goFile, srv.url, srv.token(user), ...cmds], { encoding: "utf8" });
  const ctxA = await launch(profile());
  const ctxB = await launch(profile());
  try {
    const a = await tab(ctxA, user, { resolverName: "mergeJSON" });
    const b = await tab(ctxB, user, { resolverName: "mergeJSON" });
    // A common start.
    await a.evaluate(async () => {
      const r = (window as any).r;
      await r.putJSON("profile", { name: "Ann", city: "Oslo", lang: "no" });
      await r.put("theme", "light");
      await r.listAdd("cart", "apple");
    });
    await waitFor("a synced", async () => (await status(a)).pending === 0 && (await serverText(user, "theme")) === "light");
    await waitFor("b has it", async () => (await text(b, "theme")) === "light");
    goRun("mergejson", "sync");
    // Concurrent offline edits.
    await ctxA.setOffline(true);
    await ctxB.setOffline(true);
    await a.evaluate(async () => {
      const r = (window as any).r;
      await r.update((tx: any) => tx.putJSON("profile", { ...tx.getJSON("profile"), city: "Bergen" }));
      await r.listAdd("cart", "pear");
      await r.listRemove("cart", "apple");
      await r.put("theme", "dark");
    });
    await b.evaluate(async () => {
      const r = (window as any).r;
      await r.update((tx: any) => tx.putJSON("profile", { ...tx.getJSON("profile"), lang: "en" }));
      await r.listAdd("cart", "plum");
      await r.put("theme", "blue");
    });
    goRun("mergejson", "listadd", "cart", "fig", "put", "note", "from go");
    // Back online, one after the other, and the Go replica syncs.
    await ctxA.setOffline(false);
    await waitFor("a flushed", async () => (await status(a)).pending === 0 && (await status(a)).online, 5000);
    await ctxB.setOffline(false);
    await waitFor("b flushed", async () => (await status(b)).pending === 0 && (await status(b)).online, 5000);
    goRun("mergejson", "sync");
    await a.evaluate(() => (window as any).r.sync());
    await b.evaluate(() => (window as any).r.sync());
    const state = async (p: Page) => p.evaluate(() => {
      const r = (window as any).r;
      const out: Record<string, unknown> = {};
      for (const it of r.list("")) out[it.key] = "scalar" in it.value ? new TextDecoder().decode(it.value.scalar) : it.value.list.map((x: Uint8Array) => new TextDecoder().decode(x));
      return out;
    });
    const sa = await state(a);
    const sb = await state(b);
    const sg = JSON.parse(goRun("mergejson", "sync", "dump")) as Record<string, unknown>;
    assert.deepEqual(sb, sa, "the two browsers agree");
    assert.deepEqual(sg, sa, "the Go replica agrees");
    assert.deepEqual(JSON.parse(sa.profile as string), { name: "Ann", city: "Bergen", lang: "en" }, "JSON fields merged");
    assert.deepEqual([...(sa.cart as string[])].sort(), ["fig", "pear", "plum"], "list ops merged");
    assert.ok(sa.theme === "dark" || sa.theme === "blue", `a scalar took one side: ${String(sa.theme)}`);
    assert.equal(sa.note, "from go");
  } finally {
    await ctxA.close();
    await ctxB.close();
  }
});
