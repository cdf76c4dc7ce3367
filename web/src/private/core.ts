import type { Conflict, Resolution } from "../conflict.js";
import { DalvError } from "../errors.js";
import type { Op } from "../op.js";
import { applyOps, isScalarOp } from "../op.js";
import type { RefusedBatch } from "../refused-batch.js";
import type { Value } from "../value.js";
import { valuesEqual } from "../value.js";
import type { ServerConfig } from "./config.js";
import { checkOps } from "./config.js";
import { done, read, req, S, write } from "./idb.js";
import type { Batch, Entry, PKey, Touched } from "./records.js";
import { emptyTouched } from "./records.js";
import type { Patch } from "./state.js";
import { emptyPatch, State } from "./state.js";

/** Update is the net effect of one or more answers or watch events on a partition. */
export interface Update {
  part: string;
  version: number;
  reset: boolean;
  changes: Map<string, { value: Value | undefined; version: number }>;
}

/** Decision is a resolver's answer for one conflicting key. */
export interface Decision {
  c: Conflict;
  res: Resolution;
}

/**
 * Core is the replica's storage: the IndexedDB database and the state in
 * memory. Every change is one IndexedDB transaction that reads what it
 * needs from the database (other tabs write it too), then a Patch that
 * makes memory current, handed to commit.
 */
export class Core {
  readonly state = new State();

  constructor(
    readonly db: IDBDatabase,
    private readonly commit: (patch: Patch, touched: Touched) => void,
  ) {}

  /** load reads the whole replica into memory, creating the device id of a new one. */
  async load(): Promise<void> {
    const patch = await this.rereadAll();
    const tx = read(this.db, [S.meta]);
    const meta = tx.objectStore(S.meta);
    const [stored, config] = await Promise.all([req(meta.get("device")) as Promise<string | undefined>, req(meta.get("config")) as Promise<ServerConfig | undefined>]);
    let device = stored;
    if (device === undefined) {
      // A new replica: its device id is created once, by the first tab
      // whose transaction gets there.
      const wtx = write(this.db, [S.meta]);
      const m = wtx.objectStore(S.meta);
      device = ((await req(m.get("device"))) as string | undefined) ?? randomId();
      m.put(device, "device");
      await done(wtx);
    }
    this.state.deviceId = device;
    if (config) patch.config = config;
    this.state.apply(patch);
  }

  /**
   * writeLocal queues ops as one batch, durably, and applies them to what
   * reads show. also runs in the same transaction (settling a conflict).
   */
  async writeLocal(ops: readonly Op[], also?: (tx: IDBTransaction, patch: Patch, t: Touched) => void): Promise<void> {
    const tx = write(this.db, [S.kv, S.pkeys, S.pending, S.meta, S.inbox]);
    const patch = emptyPatch(false);
    const t = emptyTouched(false);
    also?.(tx, patch, t);
    if (ops.length > 0) {
      // Every read is issued at once: one round trip to the storage, then
      // the writes and the commit.
      const groups = [...byKey(ops)];
      const pkStore = tx.objectStore(S.pkeys);
      const kvStore = tx.objectStore(S.kv);
      const meta = tx.objectStore(S.meta);
      const pendingStore = tx.objectStore(S.pending);
      const [counter, count, pks, entries] = await Promise.all([
        req(meta.get("counter")) as Promise<number | undefined>,
        req(pendingStore.count()),
        Promise.all(groups.map(([k]) => req(pkStore.get(k)) as Promise<PKey | undefined>)),
        Promise.all(groups.map(async ([k]) => ((await req(kvStore.get(["", bucket(k)]))) as Chunk | undefined)?.m.get(k))),
      ]);
      const seq = counter ?? 1;
      meta.put(seq + 1, "counter");
      pendingStore.put({ seq, no: seq, ops } satisfies Batch);
      groups.forEach(([k, kops], i) => {
        const e = entries[i];
        const p = pks[i] ?? { key: k, base: e?.v, ops: [], local: e?.v, u: 0, ul: 0 };
        const np: PKey = { ...p, ops: [...p.ops, ...kops], local: applyOps(p.local, kops) };
        pkStore.put(np);
        patch.pkeys.push([k, np]);
        t.pkeys.push(k);
      });
      patch.pendingCount = count + 1;
      t.pending = true;
    }
    await done(tx);
    this.commit(patch, t);
  }

  /** saveConfig records what the server said of itself. */
  async saveConfig(cfg: ServerConfig): Promise<void> {
    const tx = write(this.db, [S.meta]);
    tx.objectStore(S.meta).put(cfg, "config");
    await done(tx);
    const patch = emptyPatch(true);
    patch.config = cfg;
    const t = emptyTouched(true);
    t.config = true;
    this.commit(patch, t);
  }

  /** head returns the first pending batch, read from the database (other tabs add to the queue). */
  async head(): Promise<Batch | undefined> {
    const tx = read(this.db, [S.pending]);
    const c = await req(tx.objectStore(S.pending).openCursor());
    return (c?.value as Batch | undefined) ?? undefined;
  }

  /**
   * applyRemote applies u in one transaction; ack, when set, is the head
   * batch, which u's answer acknowledged. A remote change to a key with
   * pending ops does not change what reads show: it is recorded (the key's
   * bound u) so that the next sync makes the server report the conflict.
   */
  async applyRemote(u: Update, ack?: Batch): Promise<void> {
    const st = this.state;
    const old = st.versions.get(u.part) ?? 0;
    if (!ack && !u.reset && u.version <= old && u.changes.size === 0) return;
    const own = u.part === "";
    const tx = write(this.db, [S.kv, S.pkeys, S.pending, S.meta]);
    const kv = tx.objectStore(S.kv);
    const patch = emptyPatch(true);
    const t = emptyTouched(true);
    const cur = st.part(u.part);
    const changed = new Map<string, { new: Value | undefined; version: number }>();
    let next: Map<string, Entry> | undefined;
    // The chunks the update touches, read here: the database, not this
    // tab's memory, is the truth (a leader that just took over may not
    // have heard the last transaction of the one before).
    const chunks = new Map<number, Map<string, Entry>>();
    if (u.reset) {
      next = new Map();
      for (const k of cur.keys()) {
        const ch = u.changes.get(k);
        if (!ch || ch.value === undefined) changed.set(k, { new: undefined, version: 0 });
      }
      kv.delete(IDBKeyRange.bound([u.part], [u.part, []]));
      t.resetParts.push(u.part);
    } else {
      const bs = [...new Set([...u.changes.keys()].map(bucket))];
      const got = await Promise.all(bs.map((b) => req(kv.get([u.part, b])) as Promise<Chunk | undefined>));
      bs.forEach((b, i) => chunks.set(b, new Map(got[i]?.m ?? [])));
    }
    const keys = [...u.changes.keys()].sort((a, b) => (u.changes.get(a)?.version ?? 0) - (u.changes.get(b)?.version ?? 0) || (a < b ? -1 : a > b ? 1 : 0));
    for (const k of keys) {
      const ch = u.changes.get(k);
      if (!ch) continue;
      changed.set(k, { new: ch.value, version: ch.version });
      const chunk = next ?? chunks.get(bucket(k));
      if (ch.value === undefined) {
        chunk?.delete(k);
        if (!next) patch.kv.push({ p: u.part, k, e: null });
      } else {
        const e: Entry = { p: u.part, k, v: ch.value, ver: ch.version };
        chunk?.set(k, e);
        if (!next) patch.kv.push({ p: u.part, k, e });
      }
      if (!u.reset) t.kv.push([u.part, k]);
    }
    if (next) {
      for (const [k, e] of next) {
        const b = bucket(k);
        let m = chunks.get(b);
        if (!m) chunks.set(b, (m = new Map()));
        m.set(k, e);
      }
    }
    for (const [b, m] of chunks) {
      if (m.size === 0) kv.delete([u.part, b]);
      else kv.put({ p: u.part, b, m } satisfies Chunk);
    }
    if (next) patch.parts.set(u.part, next);
    const versions = { ...Object.fromEntries(st.versions), [u.part]: u.version };
    tx.objectStore(S.meta).put(versions, "versions");
    patch.versions.push([u.part, u.version]);
    t.versions.push(u.part);

    if (own) {
      const pk = tx.objectStore(S.pkeys);
      const pend = new Map(((await req(pk.getAll())) as PKey[]).map((p) => [p.key, p]));
      const upd = new Map<string, PKey | null>();
      const syncedNow = (k: string) => (changed.has(k) ? changed.get(k)?.new : cur.get(k)?.v);
      if (ack) {
        tx.objectStore(S.pending).delete(ack.seq);
        t.pending = true;
        for (const [k, kops] of byKey(ack.ops)) {
          const p = pend.get(k);
          if (!p) throw new DalvError("storage", `internal: acknowledged op on ${JSON.stringify(k)} without a pending-key record`);
          const rest = p.ops.slice(kops.length);
          if (rest.length === 0) {
            upd.set(k, null);
            continue;
          }
          // Later batches write the key too: they apply to what the
          // device expected this batch to leave. If the server holds
          // something else (remote list ops merged in), that is a remote
          // change the device has not shown.
          const expected = applyOps(p.base, kops);
          const ch = changed.get(k);
          const now = syncedNow(k);
          upd.set(k, { key: k, base: expected, ops: rest, local: p.local, u: valuesEqual(now, expected) ? 0 : Math.max(ch?.version ?? cur.get(k)?.ver ?? 1, 1), ul: 0 });
        }
      }
      for (const [k, p] of pend) {
        if (upd.has(k) || p.u !== 0) continue;
        const s = changed.get(k);
        if (!s || valuesEqual(s.new, p.base)) continue;
        let bound = old + 1;
        if (s.new !== undefined && s.version > 0 && s.version < bound) bound = s.version; // a server that lost data
        upd.set(k, { ...p, u: bound });
      }
      for (const [k, np] of upd) {
        if (np) pk.put(np);
        else pk.delete(k);
        patch.pkeys.push([k, np]);
        t.pkeys.push(k);
      }
      if (ack) patch.pendingCount = await req(tx.objectStore(S.pending).count());
    }
    await done(tx);
    this.commit(patch, t);
  }

  /** sentBase is the base version to send b with: lowered below the first unseen remote change of each key of b. */
  async sentBase(b: Batch): Promise<number> {
    const pend = await this.pendingKeys();
    let base = this.state.versions.get("") ?? 0;
    const scalar = scalarKeys(b.ops);
    for (const op of b.ops) {
      const p = pend.get(op.key);
      if (!p || p.u === 0) continue;
      let upper = p.u;
      if (!scalar.has(op.key) && p.ul > upper) upper = p.ul; // list ops conflict only with scalar changes
      if (upper - 1 < base) base = upper - 1;
    }
    return base;
  }

  /** pendingKeys reads the pending-key records from the database. */
  async pendingKeys(): Promise<Map<string, PKey>> {
    const tx = read(this.db, [S.pkeys]);
    const all = (await req(tx.objectStore(S.pkeys).getAll())) as PKey[];
    return new Map(all.map((p) => [p.key, p]));
  }

  /**
   * conflicts sorts the keys the server flagged for b (sent with base) into
   * real conflicts for the resolver, keys whose flag came from a change the
   * device had seen (cleans), and list keys free of scalar changes (lifts).
   */
  async triage(b: Batch, base: number, flagged: readonly string[], version: number): Promise<{ calls: Conflict[]; cleans: string[]; lifts: string[]; maxSeq: number }> {
    const tx = read(this.db, [S.pkeys, S.pending]);
    const pend = new Map(((await req(tx.objectStore(S.pkeys).getAll())) as PKey[]).map((p) => [p.key, p]));
    const last = await req(tx.objectStore(S.pending).openCursor(null, "prev"));
    const maxSeq = (last?.value as Batch | undefined)?.seq ?? b.seq;
    const scalar = scalarKeys(b.ops);
    const calls: Conflict[] = [];
    const cleans: string[] = [];
    const lifts: string[] = [];
    const isFlagged = new Set<string>();
    const own = this.state.part("");
    for (const k of flagged) {
      if (isFlagged.has(k)) continue;
      isFlagged.add(k);
      const p = pend.get(k);
      if (!p || p.u === 0 || base + 1 < p.u) continue;
      const remote = own.get(k)?.v;
      if (valuesEqual(remote, p.base)) {
        cleans.push(k); // the remote changes undid themselves
        continue;
      }
      calls.push({ key: k, base: p.base, local: p.local, remote, version, at: 0 });
    }
    const seen = new Set<string>();
    for (const op of b.ops) {
      const k = op.key;
      if (isFlagged.has(k) || seen.has(k)) continue;
      seen.add(k);
      const p = pend.get(k);
      if (!p || p.u === 0) continue;
      if (!scalar.has(k)) lifts.push(k); // no scalar change since its bound
      else if (base + 1 >= p.u) cleans.push(k); // no change at all since its bound
    }
    return { calls, cleans, lifts, maxSeq };
  }

  /**
   * rewrite applies resolutions: the conflicting keys' ops in the batches up
   * to maxSeq (those the resolver saw) are replaced by one op in the head
   * batch b that sets the chosen value, or by an inbox entry; the batches
   * get fresh numbers, since b was rewritten after it was refused.
   */
  async rewrite(b: Batch, maxSeq: number, decisions: Decision[], cleans: string[], lifts: string[], version: number, cfg: ServerConfig): Promise<void> {
    const tx = write(this.db, [S.pkeys, S.pending, S.meta, S.inbox, S.kv]);
    const pendingStore = tx.objectStore(S.pending);
    const queue = (await req(pendingStore.getAll())) as Batch[];
    if (queue[0]?.seq !== b.seq) {
      tx.abort();
      throw new DalvError("storage", `internal: conflicting batch ${b.no} is not the head of the queue`);
    }
    const pkStore = tx.objectStore(S.pkeys);
    const pend = new Map(((await req(pkStore.getAll())) as PKey[]).map((p) => [p.key, p]));
    const now = Date.now();
    const decided = new Set<string>();
    const headOps: Op[] = [];
    const patch = emptyPatch(true);
    const t = emptyTouched(true);
    const upd = new Map<string, PKey | null>();
    for (const d of decisions) {
      const k = d.c.key;
      decided.add(k);
      // The key's ops in batches after maxSeq were written while the
      // resolver ran: they apply to the resolution.
      const later = queue.filter((q) => q.seq > maxSeq).flatMap((q) => q.ops.filter((op) => op.key === k));
      const ops: Op[] = [];
      let res = d.res;
      let note: string | undefined;
      if (!res.deferred && !valuesEqual(res.value, d.c.remote)) {
        const op: Op = res.value === undefined ? { kind: "delete", key: k } : { kind: "put", key: k, value: res.value };
        try {
          checkOps([op], cfg);
          ops.push(op);
          headOps.push(op);
        } catch (e) {
          res = { deferred: true };
          note = `the resolver's value was refused: ${(e as Error).message}`;
        }
      }
      if (res.deferred) {
        const c: Conflict = { ...d.c, at: now, ...(note ? { note } : {}) };
        tx.objectStore(S.inbox).put(c);
        patch.inbox.push([k, c]);
        t.inbox.push(k);
      }
      ops.push(...later);
      upd.set(k, ops.length === 0 ? null : { key: k, base: d.c.remote, ops, local: applyOps(d.c.remote, ops), u: 0, ul: 0 });
    }
    for (const k of cleans) {
      const p = pend.get(k);
      if (!p || decided.has(k)) continue;
      const remote = this.state.part("").get(k)?.v;
      upd.set(k, { key: k, base: remote, ops: p.ops, local: applyOps(remote, p.ops), u: 0, ul: 0 });
    }
    for (const k of lifts) {
      const p = pend.get(k);
      if (!p || decided.has(k)) continue;
      upd.set(k, { ...p, ul: version + 1 });
    }
    if (decided.size > 0) {
      for (const q of queue) {
        let ops = q.seq <= maxSeq ? q.ops.filter((op) => !decided.has(op.key)) : [...q.ops];
        if (q.seq === b.seq) ops = [...ops, ...headOps];
        if (ops.length === 0) {
          pendingStore.delete(q.seq);
          continue;
        }
        // Fresh numbers: no request with the old ones can then apply a
        // version of a batch the device no longer holds.
        pendingStore.put({ seq: q.seq, no: await nextNumber(tx), ops } satisfies Batch);
      }
      patch.pendingCount = await req(pendingStore.count());
      t.pending = true;
    }
    for (const [k, np] of upd) {
      if (np) pkStore.put(np);
      else pkStore.delete(k);
      patch.pkeys.push([k, np]);
      t.pkeys.push(k);
    }
    await done(tx);
    this.commit(patch, t);
  }

  /** setAside moves the head batch b, which the server refused, to the refused batches; its ops no longer show in reads. */
  async setAside(b: Batch, rb: RefusedBatch): Promise<void> {
    const tx = write(this.db, [S.pkeys, S.pending, S.refused]);
    const patch = emptyPatch(true);
    const t = emptyTouched(true);
    const first = await req(tx.objectStore(S.pending).openCursor());
    if ((first?.value as Batch | undefined)?.seq !== b.seq) {
      tx.abort();
      throw new DalvError("storage", `internal: batch ${b.no} is not the head of the queue`);
    }
    tx.objectStore(S.pending).delete(b.seq);
    tx.objectStore(S.refused).put(rb);
    const pk = tx.objectStore(S.pkeys);
    for (const [k, kops] of byKey(b.ops)) {
      const p = (await req(pk.get(k))) as PKey | undefined;
      if (!p) continue;
      const rest = p.ops.slice(kops.length);
      const np: PKey | null = rest.length === 0 ? null : { ...p, ops: rest, local: applyOps(p.base, rest) };
      if (np) pk.put(np);
      else pk.delete(k);
      patch.pkeys.push([k, np]);
      t.pkeys.push(k);
    }
    patch.refused.push([rb.id, rb]);
    t.refused.push(rb.id);
    patch.pendingCount = await req(tx.objectStore(S.pending).count());
    t.pending = true;
    await done(tx);
    this.commit(patch, t);
  }

  /** dropRefused forgets a refused batch. */
  async dropRefused(id: number): Promise<void> {
    const tx = write(this.db, [S.refused]);
    tx.objectStore(S.refused).delete(id);
    await done(tx);
    const patch = emptyPatch(false);
    patch.refused.push([id, null]);
    const t = emptyTouched(false);
    t.refused.push(id);
    this.commit(patch, t);
  }

  /**
   * rereadAll builds the patch that makes memory what the database holds,
   * for a tab that becomes the leader: the tab before it may have committed
   * a last transaction it had no time to tell.
   */
  async rereadAll(): Promise<Patch> {
    const tx = read(this.db, [S.kv, S.pkeys, S.pending, S.inbox, S.refused, S.meta]);
    const [chunks, pkeys, inbox, refused, pending, vs] = await Promise.all([
      req(tx.objectStore(S.kv).getAll()) as Promise<Chunk[]>,
      req(tx.objectStore(S.pkeys).getAll()) as Promise<PKey[]>,
      req(tx.objectStore(S.inbox).getAll()) as Promise<Conflict[]>,
      req(tx.objectStore(S.refused).getAll()) as Promise<RefusedBatch[]>,
      req(tx.objectStore(S.pending).count()),
      req(tx.objectStore(S.meta).get("versions")) as Promise<Record<string, number> | undefined>,
    ]);
    const st = this.state;
    const patch = emptyPatch(true);
    for (const p of st.synced.keys()) patch.parts.set(p, new Map());
    for (const c of chunks) {
      let m = patch.parts.get(c.p);
      if (!m) patch.parts.set(c.p, (m = new Map()));
      for (const [k, e] of c.m) m.set(k, e);
    }
    const pk = new Map(pkeys.map((p) => [p.key, p]));
    for (const k of st.pend.keys()) if (!pk.has(k)) patch.pkeys.push([k, null]);
    for (const [k, p] of pk) patch.pkeys.push([k, p]);
    const ib = new Map(inbox.map((c) => [c.key, c]));
    for (const k of st.inbox.keys()) if (!ib.has(k)) patch.inbox.push([k, null]);
    for (const [k, c] of ib) patch.inbox.push([k, c]);
    const rf = new Map(refused.map((b) => [b.id, b]));
    for (const id of st.refused.keys()) if (!rf.has(id)) patch.refused.push([id, null]);
    for (const [id, b] of rf) patch.refused.push([id, b]);
    for (const [p, v] of Object.entries(vs ?? {})) patch.versions.push([p, v]);
    patch.pendingCount = pending;
    return patch;
  }

  /** reread builds the patch of what another tab's transaction changed, from the database. */
  async reread(t: Touched): Promise<Patch> {
    const tx = read(this.db, [S.kv, S.pkeys, S.pending, S.inbox, S.refused, S.meta]);
    const patch = emptyPatch(t.remote);
    const kv = tx.objectStore(S.kv);
    for (const p of t.resetParts) {
      const all = (await req(kv.getAll(IDBKeyRange.bound([p], [p, []])))) as Chunk[];
      patch.parts.set(p, new Map(all.flatMap((c) => [...c.m])));
    }
    for (const [p, k] of t.kv) {
      const c = (await req(kv.get([p, bucket(k)]))) as Chunk | undefined;
      patch.kv.push({ p, k, e: c?.m.get(k) ?? null });
    }
    for (const k of t.pkeys) patch.pkeys.push([k, ((await req(tx.objectStore(S.pkeys).get(k))) as PKey | undefined) ?? null]);
    for (const k of t.inbox) patch.inbox.push([k, ((await req(tx.objectStore(S.inbox).get(k))) as Conflict | undefined) ?? null]);
    for (const id of t.refused) patch.refused.push([id, ((await req(tx.objectStore(S.refused).get(id))) as RefusedBatch | undefined) ?? null]);
    if (t.versions.length > 0) {
      const vs = ((await req(tx.objectStore(S.meta).get("versions"))) as Record<string, number> | undefined) ?? {};
      for (const p of t.versions) patch.versions.push([p, vs[p] ?? 0]);
    }
    if (t.pending) patch.pendingCount = await req(tx.objectStore(S.pending).count());
    if (t.config) {
      const cfg = (await req(tx.objectStore(S.meta).get("config"))) as ServerConfig | undefined;
      if (cfg) patch.config = cfg;
    }
    return patch;
  }
}

/** BUCKETS is how many chunks hold a partition's synced keys. */
const BUCKETS = 64;

/**
 * Chunk is one IndexedDB record holding the synced keys of one bucket of a
 * partition: a first sync or an open then costs tens of records, not one
 * per key, and a remote change rewrites one chunk.
 */
export interface Chunk {
  readonly p: string;
  readonly b: number;
  readonly m: Map<string, Entry>;
}

/** bucket is the chunk of a key (FNV-1a of its UTF-16 code units). */
export function bucket(k: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < k.length; i++) h = Math.imul(h ^ k.charCodeAt(i), 0x01000193);
  return (h >>> 0) % BUCKETS;
}

/** nextNumber takes the next number of the device's counter, which numbers batches. */
async function nextNumber(tx: IDBTransaction): Promise<number> {
  const meta = tx.objectStore(S.meta);
  const n = ((await req(meta.get("counter"))) as number | undefined) ?? 1;
  meta.put(n + 1, "counter");
  return n;
}

/** byKey groups ops by key, each group in order, keys in order of first op. */
export function byKey(ops: readonly Op[]): Map<string, Op[]> {
  const m = new Map<string, Op[]>();
  for (const op of ops) {
    const g = m.get(op.key);
    if (g) g.push(op);
    else m.set(op.key, [op]);
  }
  return m;
}

function scalarKeys(ops: readonly Op[]): Set<string> {
  return new Set(ops.filter(isScalarOp).map((op) => op.key));
}

function randomId(): string {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
}
