import "fake-indexeddb/auto";
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import type { DalvServer } from "../test/dalv-server.js";
import { b64, newUser, startServer, waitFor } from "../test/dalv-server.js";
import type { Resolver } from "./conflict.js";
import { clientWins, deferToInbox, serverWins, use } from "./conflict.js";
import { DalvError } from "./errors.js";
import { mergeJSON } from "./merge-json.js";
import type { ReplicaOptions } from "./options.js";
import { FORMAT, openDatabase } from "./private/idb.js";
import type { Replica } from "./replica.js";
import { openReplica } from "./replica.js";

let srv: DalvServer;
before(async () => {
  srv = await startServer();
});
after(async () => {
  await srv.stop();
});

let n = 0;
async function open(user: string, o: ReplicaOptions = {}): Promise<Replica> {
  return openReplica({ name: `db-${n++}`, serverUrl: srv.url, token: () => srv.token(user), autoStart: false, retryMinMs: 20, ...o });
}
const text = (r: Replica, k: string) => {
  const v = r.get(k);
  return v && "scalar" in v ? new TextDecoder().decode(v.scalar) : v && "list" in v ? v.list.map((x) => new TextDecoder().decode(x)) : undefined;
};
const serverText = async (user: string, k: string) => {
  const g = await srv.get(user, k);
  const v = g?.value;
  if (!v) return undefined;
  if (v.scalar !== undefined) return Buffer.from(v.scalar, "base64").toString();
  return (v.list?.items ?? []).map((x) => Buffer.from(x, "base64").toString());
};
const put = (key: string, s: string) => ({ kind: "OP_KIND_PUT", key, value: { scalar: b64(s) } });

test("local refusals: system keys, oversize values, list ops on scalars, shared partitions", async () => {
  const r = await openReplica({ name: `db-${n++}`, shared: ["catalog"] });
  await assert.rejects(r.put("sys/x", "1"), (e: DalvError) => e instanceof DalvError && e.code === "system_key");
  await assert.rejects(r.put("big", new Uint8Array((1 << 20) + 1)), (e: DalvError) => e.code === "limit");
  await assert.rejects(r.put("", "1"), (e: DalvError) => e.code === "invalid");
  await r.put("s", "scalar");
  await assert.rejects(r.listAdd("s", "a"), (e: DalvError) => e.code === "not_list");
  await assert.rejects(r.shared("catalog").put("x", 1), (e: DalvError) => e.code === "read_only");
  await assert.rejects(
    r.update((tx) => {
      tx.put("a", "1");
      tx.put("sys/b", "2");
    }),
    (e: DalvError) => e.code === "system_key",
  );
  assert.equal(r.get("a"), undefined, "a refused transaction writes nothing");
  assert.equal(r.status.pending, 1);
  r.close();
});

test("pending queue: offline writes stay in order across a reopen and reach the server in order", async () => {
  const user = newUser();
  const name = `db-${n++}`;
  const dead = "http://127.0.0.1:9"; // nothing listens there
  let r = await openReplica({ name, serverUrl: dead, token: () => srv.token(user), autoStart: false });
  await r.put("k", "1");
  await r.listAdd("l", "a");
  await r.update((tx) => {
    tx.put("k", "2");
    tx.listAdd("l", "b");
  });
  await assert.rejects(r.sync(), (e: DalvError) => e.code === "unavailable");
  assert.equal(r.status.online, false);
  assert.equal(r.status.lastError?.code, "unavailable");
  assert.equal(r.status.pending, 3);
  r.close();
  r = await openReplica({ name, serverUrl: srv.url, token: () => srv.token(user), autoStart: false });
  assert.equal(r.status.pending, 3);
  assert.equal(text(r, "k"), "2");
  assert.deepEqual(text(r, "l"), ["a", "b"]);
  await r.sync();
  assert.equal(r.status.pending, 0);
  assert.equal(r.status.online, true);
  assert.equal(await serverText(user, "k"), "2");
  assert.deepEqual(await serverText(user, "l"), ["a", "b"]);
  r.close();
});

test("each resolver against a concurrent backend edit", async () => {
  const cases: { name: string; resolver: Resolver | undefined; local: unknown; remote: unknown; want: unknown; inbox: boolean }[] = [
    { name: "serverWins", resolver: serverWins, local: { a: 2 }, remote: { a: 3 }, want: { a: 3 }, inbox: false },
    { name: "clientWins", resolver: clientWins, local: { a: 2 }, remote: { a: 3 }, want: { a: 2 }, inbox: false },
    { name: "mergeJSON", resolver: mergeJSON, local: { a: 2, b: 1 }, remote: { a: 1, b: 3 }, want: { a: 2, b: 3 }, inbox: false },
    { name: "custom", resolver: (c) => use({ scalar: new TextEncoder().encode(JSON.stringify({ custom: c.key })) }), local: { a: 2 }, remote: { a: 3 }, want: { custom: "doc" }, inbox: false },
    { name: "defer", resolver: () => deferToInbox(), local: { a: 2 }, remote: { a: 3 }, want: { a: 3 }, inbox: true },
    { name: "no resolver defers", resolver: undefined, local: { a: 2 }, remote: { a: 3 }, want: { a: 3 }, inbox: true },
  ];
  for (const c of cases) {
    const user = newUser();
    const r = await open(user, c.resolver ? { resolver: c.resolver } : {});
    await r.putJSON("doc", { a: 1, b: 1 });
    await r.sync();
    await r.putJSON("doc", c.local);
    await r.putJSON("other", "x"); // another key in a later batch goes on
    await srv.commit(user, [put("doc", JSON.stringify(c.remote))]);
    await r.sync();
    assert.deepEqual(r.getJSON("doc"), c.want, c.name);
    assert.deepEqual(JSON.parse((await serverText(user, "doc")) as string), c.want, `${c.name}: server`);
    assert.equal(await serverText(user, "other"), '"x"', `${c.name}: other key`);
    assert.equal(r.conflicts().length, c.inbox ? 1 : 0, `${c.name}: inbox`);
    assert.equal(r.status.pending, 0, c.name);
    if (c.inbox) {
      const cf = r.conflicts()[0];
      assert.deepEqual(JSON.parse(new TextDecoder().decode((cf?.local as { scalar: Uint8Array }).scalar)), c.local);
      // Settled later: the application's choice reaches the server.
      await r.settle("doc", use(cf?.local));
      await r.sync();
      assert.equal(r.conflicts().length, 0);
      assert.deepEqual(JSON.parse((await serverText(user, "doc")) as string), c.local, `${c.name}: settled`);
    }
    r.close();
  }
});

test("rebasing after a conflict: other keys go on, list ops merge, writes made while resolving apply to the resolution", async () => {
  const user = newUser();
  const name = `db-${n++}`;
  const seen: string[] = [];
  // A second tab of the same replica writes the key while the resolver runs.
  const tab2 = await openReplica({ name, autoStart: false });
  let during: Promise<void> | undefined;
  const r = await openReplica({
    name,
    serverUrl: srv.url,
    token: () => srv.token(user),
    autoStart: false,
    resolver: (c) => {
      seen.push(c.key);
      during = tab2.update((tx) => tx.put("k", `${tx.get("k") ? "x" : "?"}-during`));
      return use(c.remote);
    },
  });
  await r.put("k", "base");
  await r.listAdd("cart", "apple");
  await r.sync();
  await r.put("k", "mine");
  await r.listAdd("cart", "pear");
  await r.put("other", "o");
  await srv.commit(user, [put("k", "theirs"), { kind: "OP_KIND_LIST_ADD", key: "cart", value: { scalar: b64("plum") } }]);
  await r.sync();
  await during;
  await r.sync();
  assert.deepEqual(seen, ["k"], "list keys never reach the resolver");
  assert.equal(await serverText(user, "k"), "x-during");
  assert.equal(text(r, "k"), "x-during");
  await waitFor("the other tab sees it", () => text(tab2, "k") === "x-during");
  assert.equal(await serverText(user, "other"), "o");
  assert.deepEqual(await serverText(user, "cart"), ["apple", "plum", "pear"]);
  assert.deepEqual(text(r, "cart"), ["apple", "plum", "pear"]);
  assert.equal(r.status.pending, 0);
  r.close();
  tab2.close();
});

test("a watched remote change to a key with pending ops reaches the resolver", async () => {
  const user = newUser();
  const seen: string[] = [];
  const r = await open(user, { resolver: (c) => (seen.push(c.key), use(c.local)), autoStart: true });
  await waitFor("watching", () => r.status.watching);
  await r.put("k", "v1");
  await waitFor("synced", () => r.status.pending === 0);
  r.stop();
  await r.put("k", "local");
  await srv.commit(user, [put("k", "remote")]);
  r.start();
  await waitFor("resolved and synced", async () => r.status.pending === 0 && (await serverText(user, "k")) === "local");
  assert.deepEqual(seen, ["k"]);
  r.close();
});

test("replica format: a newer format refuses to open, and an older open tab is told to reload with its writes kept", async () => {
  const name = `db-${n++}`;
  let told = false;
  const r = await openReplica({ name, onOutdated: () => (told = true) });
  await r.put("k", "kept");
  // A newer package opens the database at the next format version.
  const newer = await new Promise<IDBDatabase>((res, rej) => {
    const q = indexedDB.open(name, FORMAT + 1);
    q.onsuccess = () => res(q.result);
    q.onerror = () => rej(q.error);
  });
  await waitFor("old tab told", () => told);
  assert.throws(() => r.get("k"), (e: DalvError) => e.code === "closed");
  const tx = newer.transaction("queue");
  const all = await new Promise<unknown[]>((res) => {
    const q = tx.objectStore("queue").getAll();
    q.onsuccess = () => res(q.result);
  });
  assert.equal(all.length, 1, "the pending write is still there");
  newer.close();
  await assert.rejects(openDatabase(name), (e: DalvError) => e.code === "outdated");
});

test("a format 1 replica is upgraded on open: its pending batches keep their numbers, and new ones follow its counter", async () => {
  const user = newUser();
  const name = `db-${n++}`;
  const device = `upgraded-${n}`;
  // The server has applied this device's batch 11, and the replica's
  // format 1 counter is at 12 with batches 6 and 7 still pending (as after
  // a rewrite whose later batches were emptied; such states are made by
  // hand here, as format 1 left them).
  const sync = await fetch(`${srv.url}/dalv.v1.ClientService/Sync`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${srv.token(user)}` },
    body: JSON.stringify({ deviceId: device, baseVersion: "0", batch: "11", ops: [put("z", "sent before")] }),
  });
  assert.equal(sync.status, 200, await sync.text());
  const enc = (x: string) => new TextEncoder().encode(x);
  const a = { kind: "put", key: "a", value: { scalar: enc("one") } };
  const l = { kind: "listAdd", key: "l", elem: enc("x") };
  await new Promise<void>((res, rej) => {
    const q = indexedDB.open(name, 1);
    q.onupgradeneeded = () => {
      const db = q.result;
      db.createObjectStore("kv", { keyPath: ["p", "b"] });
      db.createObjectStore("pkeys", { keyPath: "key" });
      db.createObjectStore("pending", { keyPath: "seq" });
      db.createObjectStore("inbox", { keyPath: "key" });
      db.createObjectStore("refused", { keyPath: "id" });
      const meta = db.createObjectStore("meta");
      const tx = q.transaction as IDBTransaction;
      tx.objectStore("pending").put({ seq: 3, no: 12 - 6, ops: [a] });
      tx.objectStore("pending").put({ seq: 5, no: 12 - 5, ops: [l] });
      tx.objectStore("pkeys").put({ key: "a", base: undefined, ops: [a], local: a.value, u: 0, ul: 0 });
      tx.objectStore("pkeys").put({ key: "l", base: undefined, ops: [l], local: { list: [l.elem] }, u: 0, ul: 0 });
      meta.put(device, "device");
      meta.put(12, "counter");
    };
    q.onsuccess = () => {
      q.result.close();
      res();
    };
    q.onerror = () => rej(q.error);
  });
  const r = await open(user, { name });
  assert.equal(text(r, "a"), "one", "pending writes show after the upgrade");
  assert.deepEqual(text(r, "l"), ["x"]);
  assert.equal(r.status.pending, 2);
  await r.put("b", "after");
  await r.sync();
  assert.equal(r.status.pending, 0);
  // Batches 6 and 7 are below the server's 11, so the server answers them
  // as applied already; the new write is numbered past the counter and
  // applies. A number from 1 again would have been dropped as a replay.
  assert.equal(await serverText(user, "b"), "after");
  assert.equal(await serverText(user, "z"), "sent before");
  assert.equal(await serverText(user, "a"), undefined);
  r.close();
});

test("a token is asked again on unauthenticated", async () => {
  const user = newUser();
  let calls = 0;
  const r = await openReplica({ name: `db-${n++}`, serverUrl: srv.url, autoStart: false, token: () => (++calls === 1 ? "expired.bad.token" : srv.token(user)) });
  await r.put("k", "v");
  await r.sync();
  assert.equal(calls, 2);
  assert.equal(r.user, user);
  assert.equal(await serverText(user, "k"), "v");
  r.close();
});

test("a batch the server refuses is set aside and the next goes on", async () => {
  const user = newUser();
  const srv2 = await startServer(["--system-prefix", "private/"]);
  try {
    const refused: string[] = [];
    const r = await openReplica({ name: `db-${n++}`, serverUrl: srv2.url, token: () => srv2.token(user), autoStart: false, onRefused: (b) => refused.push(b.code) });
    await r.put("private/x", "1"); // allowed locally before first contact
    await r.put("ok", "1");
    await r.sync();
    assert.deepEqual(refused, ["permission_denied"]);
    assert.equal(r.refused().length, 1);
    assert.equal(r.get("private/x"), undefined);
    assert.equal(r.status.pending, 0);
    await assert.rejects(r.put("private/y", "1"), (e: DalvError) => e.code === "system_key");
    await r.dropRefused(r.refused()[0]!.id);
    assert.equal(r.refused().length, 0);
    r.close();
  } finally {
    await srv2.stop();
  }
});

test("subscriptions see local and remote changes; a shared partition is pulled, watched and read-only", async () => {
  const user = newUser();
  const srv2 = await startServer(["--shared", "catalog", "--heartbeat", "1s"]);
  try {
    await srv2.commitShared("catalog", [put("cat/shoes", "Shoes")]);
    const r = await openReplica({ name: `db-${n++}`, serverUrl: srv2.url, token: () => srv2.token(user), shared: ["catalog"], retryMinMs: 20 });
    after(() => r.close());
    const seen: string[] = [];
    const off = r.subscribe("cart/", (c) => seen.push(`${c.key}=${c.remote ? "remote" : "local"}`));
    const sharedSeen: string[] = [];
    const cat = r.shared("catalog");
    cat.subscribe("cat/", (c) => sharedSeen.push(c.key));
    await r.listAdd("cart/items", "milk");
    await r.put("prefs/x", "1"); // outside the prefix
    await waitFor("watching", () => r.status.watching && cat.version > 0);
    assert.equal(new TextDecoder().decode((cat.get("cat/shoes") as { scalar: Uint8Array }).scalar), "Shoes");
    await srv2.commit(user, [put("cart/note", "ring")]);
    await srv2.commitShared("catalog", [put("cat/hats", "Hats")]);
    await waitFor("remote changes arrive by watch", () => seen.includes("cart/note=remote") && sharedSeen.includes("cat/hats"));
    assert.deepEqual(seen.slice(0, 1), ["cart/items=local"]);
    assert.ok(!seen.some((s) => s.startsWith("prefs/")));
    assert.deepEqual(cat.list("cat/").map((it) => it.key), ["cat/hats", "cat/shoes"]);
    await assert.rejects(cat.put("cat/x", 1), (e: DalvError) => e.code === "read_only");
    off();
    await r.put("cart/after", "1");
    assert.ok(!seen.includes("cart/after=local"), "no calls after cancel");
    r.close();
  } finally {
    await srv2.stop();
  }
});
