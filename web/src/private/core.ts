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
import type { Anchor, Batch, Entry, PKey, Touched } from "./records.js";
import { emptyTouched } from "./records.js";
import type { Patch } from "./state.js";
import { compareKeys, emptyPatch, State } from "./state.js";

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
 * memory. Every change is one IndexedDB transaction, then a Patch that
 * makes memory current, handed to commit. A local write reads nothing: it
 * appends one batch to the queue. The tab that syncs reads what it needs
 * from the database (other tabs write the queue too).
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
    let device = (await req(read(this.db, [S.meta]).objectStore(S.meta).get("device"))) as string | undefined;
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
    this.state.apply(patch);
  }

  /**
   * writeLocal queues ops as one batch, durably, and applies them to what
   * reads show. also runs in the same transaction (settling a conflict).
   * The transaction is one put to the queue: the batch carries what this
   * tab showed (its partition version and each key's value before the
   * batch), from which the sync learns what the ops apply to.
   */
  async writeLocal(ops: readonly Op[], also?: (tx: IDBTransaction, patch: Patch, t: Touched) => void): Promise<void> {
    const tx = write(this.db, also ? [S.queue, S.inbox] : [S.queue]);
    const patch = emptyPatch(false);
    const t = emptyTouched(false);
    also?.(tx, patch, t);
    if (ops.length > 0) {
      const st = this.state;
      const groups = [...byKey(ops)];
      const bases = new Map(groups.map(([k]) => [k, st.view("", k)]));
      tx.objectStore(S.queue).add({ ops, v: st.versions.get("") ?? 0, bases } satisfies Omit<Batch, "seq">);
      for (const [k, kops] of groups) {
        const p = st.pend.get(k) ?? { key: k, base: bases.get(k), ops: [], local: bases.get(k), u: 0, ul: 0 };
        const np: PKey = { ...p, ops: [...p.ops, ...kops], local: applyOps(p.local, kops) };
        patch.pkeys.push([k, np]);
        t.pkeys.push(k);
      }
      patch.pendingCount = st.pendingCount + 1;
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
    const tx = read(this.db, [S.queue]);
    const c = await req(tx.objectStore(S.queue).openCursor());
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
    const tx = write(this.db, [S.kv, S.pkeys, S.queue, S.meta]);
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
    const keys = [...u.changes.keys()].sort((a, b) => (u.changes.get(a)?.version ?? 0) - (u.changes.get(b)?.version ?? 0) || compareKeys(a, b));
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
      const { pend } = await this.pendingIn(tx);
      const upd = new Map<string, PKey | null>();
      const syncedNow = (k: string) => (changed.has(k) ? changed.get(k)?.new : cur.get(k)?.v);
      if (ack) {
        tx.objectStore(S.queue).delete(ack.seq);
        t.pending = true;
        for (const [k, kops] of byKey(ack.ops)) {
          const p = pend.get(k);
          if (!p) throw new DalvError("storage", `internal: acknowledged batch ${ack.seq} is not in the queue`);
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
      putAnchors(pk, upd, patch, t);
      if (ack) patch.pendingCount = await req(tx.objectStore(S.queue).count());
    }
    await done(tx);
    this.commit(patch, t);
  }

  /** sentBase is the base version to send b with: lowered below the first unseen remote change of each key of b. */
  async sentBase(b: Batch): Promise<number> {
    const { pend } = await this.pendingIn(read(this.db, [S.pkeys, S.queue]));
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

  /**
   * pendingIn reads the queue and the anchors in tx: the batches in order
   * and each pending key as the sync sees it. The tab that syncs is the
   * only one that changes synced values, so its memory holds them.
   */
  private async pendingIn(tx: IDBTransaction): Promise<{ queue: Batch[]; pend: Map<string, PKey> }> {
    const [queue, anchors] = await Promise.all([req(tx.objectStore(S.queue).getAll()) as Promise<Batch[]>, req(tx.objectStore(S.pkeys).getAll()) as Promise<Anchor[]>]);
    const own = this.state.part("");
    return { queue, pend: derivePending(queue, new Map(anchors.map((a) => [a.key, a])), (k) => own.get(k)?.v) };
  }

  /**
   * conflicts sorts the keys the server flagged for b (sent with base) into
   * real conflicts for the resolver, keys whose flag came from a change the
   * device had seen (cleans), and list keys free of scalar changes (lifts).
   */
  async triage(b: Batch, base: number, flagged: readonly string[], version: number): Promise<{ calls: Conflict[]; cleans: string[]; lifts: string[]; maxSeq: number }> {
    const { queue, pend } = await this.pendingIn(read(this.db, [S.pkeys, S.queue]));
    const maxSeq = queue.at(-1)?.seq ?? b.seq;
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
   * get fresh numbers (new places at the queue's end, in the same order),
   * since b was rewritten after it was refused.
   */
  async rewrite(b: Batch, maxSeq: number, decisions: Decision[], cleans: string[], lifts: string[], version: number, cfg: ServerConfig): Promise<void> {
    const tx = write(this.db, [S.pkeys, S.queue, S.inbox]);
    const queueStore = tx.objectStore(S.queue);
    const { queue, pend } = await this.pendingIn(tx);
    checkHead(tx, queue, b);
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
        // Fresh numbers: no request with the old ones can then apply a
        // version of a batch the device no longer holds.
        queueStore.delete(q.seq);
        if (ops.length > 0) queueStore.add({ ops, v: q.v, bases: q.bases } satisfies Omit<Batch, "seq">);
      }
      patch.pendingCount = await req(queueStore.count());
      t.pending = true;
    }
    putAnchors(tx.objectStore(S.pkeys), upd, patch, t);
    await done(tx);
    this.commit(patch, t);
  }

  /** setAside moves the head batch b, which the server refused, to the refused batches; its ops no longer show in reads. */
  async setAside(b: Batch, rb: RefusedBatch): Promise<void> {
    const tx = write(this.db, [S.pkeys, S.queue, S.refused]);
    const patch = emptyPatch(true);
    const t = emptyTouched(true);
    const { queue, pend } = await this.pendingIn(tx);
    checkHead(tx, queue, b);
    tx.objectStore(S.queue).delete(b.seq);
    tx.objectStore(S.refused).put(rb);
    // The keys' later ops now apply to their base without the refused
    // ones: their anchors say so.
    const upd = new Map<string, PKey | null>();
    for (const [k, kops] of byKey(b.ops)) {
      const p = pend.get(k);
      if (!p) continue;
      const rest = p.ops.slice(kops.length);
      upd.set(k, rest.length === 0 ? null : { ...p, ops: rest, local: applyOps(p.base, rest) });
    }
    putAnchors(tx.objectStore(S.pkeys), upd, patch, t);
    patch.refused.push([rb.id, rb]);
    t.refused.push(rb.id);
    patch.pendingCount = queue.length - 1;
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
    const tx = read(this.db, [S.kv, S.pkeys, S.queue, S.inbox, S.refused, S.meta]);
    const [chunks, anchors, inbox, refused, queue, vs, cfg] = await Promise.all([
      req(tx.objectStore(S.kv).getAll()) as Promise<Chunk[]>,
      req(tx.objectStore(S.pkeys).getAll()) as Promise<Anchor[]>,
      req(tx.objectStore(S.inbox).getAll()) as Promise<Conflict[]>,
      req(tx.objectStore(S.refused).getAll()) as Promise<RefusedBatch[]>,
      req(tx.objectStore(S.queue).getAll()) as Promise<Batch[]>,
      req(tx.objectStore(S.meta).get("versions")) as Promise<Record<string, number> | undefined>,
      req(tx.objectStore(S.meta).get("config")) as Promise<ServerConfig | undefined>,
    ]);
    const st = this.state;
    const patch = emptyPatch(true);
    for (const p of st.synced.keys()) patch.parts.set(p, new Map());
    for (const c of chunks) {
      let m = patch.parts.get(c.p);
      if (!m) patch.parts.set(c.p, (m = new Map()));
      for (const [k, e] of c.m) m.set(k, e);
    }
    const own = patch.parts.get("");
    const pk = derivePending(queue, new Map(anchors.map((a) => [a.key, a])), (k) => own?.get(k)?.v);
    replaceAll(patch.pkeys, st.pend, pk);
    replaceAll(patch.inbox, st.inbox, new Map(inbox.map((c) => [c.key, c])));
    replaceAll(patch.refused, st.refused, new Map(refused.map((b) => [b.id, b])));
    for (const [p, v] of Object.entries(vs ?? {})) patch.versions.push([p, v]);
    patch.pendingCount = queue.length;
    if (cfg) patch.config = cfg;
    return patch;
  }

  /** reread builds the patch of what another tab's transaction changed, from the database. */
  async reread(t: Touched): Promise<Patch> {
    const tx = read(this.db, [S.kv, S.pkeys, S.queue, S.inbox, S.refused, S.meta]);
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
    if (t.pkeys.length > 0 || t.pending) {
      const { queue, pend } = await this.pendingIn(tx);
      for (const k of t.pkeys) patch.pkeys.push([k, pend.get(k) ?? null]);
      patch.pendingCount = queue.length;
    }
    for (const k of t.inbox) patch.inbox.push([k, ((await req(tx.objectStore(S.inbox).get(k))) as Conflict | undefined) ?? null]);
    for (const id of t.refused) patch.refused.push([id, ((await req(tx.objectStore(S.refused).get(id))) as RefusedBatch | undefined) ?? null]);
    if (t.versions.length > 0) {
      const vs = ((await req(tx.objectStore(S.meta).get("versions"))) as Record<string, number> | undefined) ?? {};
      for (const p of t.versions) patch.versions.push([p, vs[p] ?? 0]);
    }
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

/**
 * derivePending makes each pending key of the queue: its ops are the
 * queue's, in order; what they apply to is its anchor's, or else what the
 * first batch holding them saw. A key whose synced value is not what that
 * batch saw had a remote change the writing tab had not shown: its bound u
 * makes the server report the key, as for a change the sync recorded.
 * synced gives a key's synced value.
 */
export function derivePending(queue: readonly Batch[], anchors: ReadonlyMap<string, Anchor>, synced: (k: string) => Value | undefined): Map<string, PKey> {
  const out = new Map<string, PKey>();
  for (const b of queue) {
    for (const [k, kops] of byKey(b.ops)) {
      let p = out.get(k);
      if (!p) {
        const a = anchors.get(k);
        if (a) {
          p = { key: k, base: a.base, ops: [], local: a.base, u: a.u, ul: a.ul };
        } else {
          const base = b.bases?.get(k);
          p = { key: k, base, ops: [], local: base, u: valuesEqual(synced(k), base) ? 0 : (b.v ?? 0) + 1, ul: 0 };
        }
      }
      out.set(k, { ...p, ops: [...p.ops, ...kops], local: applyOps(p.local, kops) });
    }
  }
  return out;
}

/** replaceAll adds to out what makes the map had into now: each of now's entries, and null for each key gone. */
function replaceAll<K, V>(out: [K, V | null][], had: ReadonlyMap<K, V>, now: ReadonlyMap<K, V>): void {
  for (const k of had.keys()) if (!now.has(k)) out.push([k, null]);
  out.push(...now);
}

/** checkHead aborts tx and throws unless b is the head of queue: only the tab that syncs takes batches off the queue, and only its head. */
function checkHead(tx: IDBTransaction, queue: readonly Batch[], b: Batch): void {
  if (queue[0]?.seq !== b.seq) {
    tx.abort();
    throw new DalvError("storage", `internal: batch ${b.seq} is not the head of the queue`);
  }
}

/** putAnchors writes (or, for null, deletes) the anchors of upd and adds them to patch and t. */
function putAnchors(store: IDBObjectStore, upd: ReadonlyMap<string, PKey | null>, patch: Patch, t: Touched): void {
  for (const [k, np] of upd) {
    if (np) store.put({ key: k, base: np.base, u: np.u, ul: np.ul } satisfies Anchor);
    else store.delete(k);
    patch.pkeys.push([k, np]);
    t.pkeys.push(k);
  }
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
