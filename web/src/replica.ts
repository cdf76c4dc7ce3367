import type { Change, Item } from "./change.js";
import type { Conflict, Resolution } from "./conflict.js";
import { DalvError } from "./errors.js";
import type { Op } from "./op.js";
import type { ReplicaOptions } from "./options.js";
import { checkOps, useRuleChecker } from "./private/config.js";
import { Core } from "./private/core.js";
import { openDatabase, S } from "./private/idb.js";
import type { Touched } from "./private/records.js";
import type { Patch } from "./private/state.js";
import { compareKeys } from "./private/state.js";
import type { LoopStatus } from "./private/syncer.js";
import { Syncer } from "./private/syncer.js";
import type { Message } from "./private/tabs.js";
import { Tabs } from "./private/tabs.js";
import type { RefusedBatch } from "./refused-batch.js";
import type { SharedPartition } from "./shared-partition.js";
import { createSharedPartition } from "./shared-partition.js";
import type { SyncStatus } from "./status.js";
import { bytesOf, decodeJSON, Tx } from "./tx.js";
import type { Value } from "./value.js";
import { valuesEqual } from "./value.js";

interface Subscription {
  part: string;
  prefix: string;
  fn: (c: Change) => void;
}

/**
 * openReplica opens the replica named by options.name in IndexedDB,
 * creating it (and a new random device id) if needed, and loads it into
 * memory: reads and writes work offline at once. With serverUrl set (and
 * autoStart not false) the tab joins the election of the one tab that syncs.
 */
export async function openReplica(options: ReplicaOptions = {}): Promise<Replica> {
  const name = options.name ?? "dalv";
  useRuleChecker(options.checkRules);
  const db = await openDatabase(name);
  const r = new Replica(name, db, options);
  try {
    await r["core"].load();
  } catch (e) {
    db.close();
    throw e;
  }
  if (options.serverUrl !== undefined && (options.autoStart ?? true)) r.start();
  return r;
}

/**
 * Replica is a user's data in this browser: synced values, pending local
 * writes and what the device knows of the server, in IndexedDB and in
 * memory. Every tab of the origin reads and writes it; one tab at a time
 * (the leader) syncs it with the server and tells the others.
 */
export class Replica {
  private readonly core: Core;
  private readonly tabs: Tabs;
  private readonly syncer: Syncer | undefined;
  private readonly subs = new Set<Subscription>();
  private readonly statusSubs = new Set<(s: SyncStatus) => void>();
  private leaderStatus: LoopStatus = { online: false, watching: false, lastSync: 0, lastError: undefined };
  private closed = false;
  private wantSync = false;
  private readonly onlineListener = () => this.syncer?.kick();

  /** @internal Use openReplica. */
  constructor(
    readonly name: string,
    private readonly db: IDBDatabase,
    private readonly options: ReplicaOptions,
  ) {
    this.core = new Core(db, (patch, touched) => this.committed(patch, touched));
    this.tabs = new Tabs(name, (m) => void this.message(m));
    db.onversionchange = () => {
      // A newer version of the package opens the replica to upgrade it:
      // this tab lets it, and must reload to run the new code.
      this.close();
      options.onOutdated?.();
    };
    if (options.serverUrl !== undefined) {
      if (!options.token) throw new DalvError("invalid", "options.token is required with options.serverUrl");
      this.syncer = new Syncer(
        this.core,
        {
          ...options,
          serverUrl: options.serverUrl,
          token: options.token,
          shared: options.shared ?? [],
          retryMinMs: options.retryMinMs ?? 200,
          retryMaxMs: options.retryMaxMs ?? 30_000,
          resyncEveryMs: options.resyncEveryMs ?? 300_000,
          maxConflictRounds: options.maxConflictRounds ?? 10,
          maxLimitRetries: options.maxLimitRetries ?? 8,
        },
        (s) => this.loopStatus(s),
      );
    }
    if (typeof addEventListener === "function") addEventListener("online", this.onlineListener);
  }

  /** deviceId is the device's stable random id, shared by the tabs of the origin. */
  get deviceId(): string {
    return this.core.state.deviceId;
  }

  /** user is the user whose data the replica holds, once a server has said so; "" before first contact. */
  get user(): string {
    return this.core.state.config.user;
  }

  /** get returns key's value as the device sees it (the synced value with pending writes applied); undefined where absent. */
  get(key: string): Value | undefined {
    this.check();
    return this.core.state.view("", key);
  }

  /** getJSON decodes the JSON scalar at key; undefined where absent. */
  getJSON<T = unknown>(key: string): T | undefined {
    return decodeJSON<T>(key, this.get(key));
  }

  /** list returns the keys under prefix ("" for all) as the device sees them, in key order. */
  list(prefix = ""): Item[] {
    this.check();
    const st = this.core.state;
    return st.keys("", prefix).map((k) => ({ key: k, value: st.view("", k) as Value }));
  }

  /** put sets key to a scalar (bytes, or a string as UTF-8) or to a value; durable when the promise resolves. */
  put(key: string, v: Uint8Array | string | Value): Promise<void> {
    return this.update((tx) => tx.put(key, v));
  }

  /** putJSON sets key to v encoded as JSON; durable when the promise resolves. */
  putJSON(key: string, v: unknown): Promise<void> {
    return this.update((tx) => tx.putJSON(key, v));
  }

  /** delete removes key; durable when the promise resolves. */
  delete(key: string): Promise<void> {
    return this.update((tx) => tx.delete(key));
  }

  /** listAdd appends elem to the list at key unless present; durable when the promise resolves. */
  listAdd(key: string, elem: Uint8Array | string): Promise<void> {
    return this.update((tx) => tx.listAdd(key, elem));
  }

  /** listRemove removes elem from the list at key if present; durable when the promise resolves. */
  listRemove(key: string, elem: Uint8Array | string): Promise<void> {
    return this.update((tx) => tx.listRemove(key, elem));
  }

  /**
   * update runs fn as one transaction of local writes. If fn returns and
   * wrote something, the writes become one pending batch, durable in
   * IndexedDB (a strict transaction) when the promise resolves, and reach the
   * server together as one commit. If fn throws, nothing is written and the
   * promise rejects with its error.
   */
  async update(fn: (tx: Tx) => void): Promise<void> {
    try {
      this.check();
      const tx = new Tx(this.core.state, this.core.state.config);
      fn(tx);
      if (tx.ops.length === 0) return;
      await this.core.writeLocal(tx.ops);
    } catch (e) {
      throw e instanceof DalvError ? e : new DalvError("invalid", `update: ${(e as Error)?.message ?? String(e)}`, { cause: e });
    }
    this.kickLeader();
  }

  /** conflicts returns the deferred conflicts in the inbox, in key order. */
  conflicts(): Conflict[] {
    this.check();
    return [...this.core.state.inbox.values()].sort((a, b) => compareKeys(a.key, b.key));
  }

  /**
   * settle ends the deferred conflict on key with res (not a deferral): the
   * key will hold res's value, written like a local write. If the server's
   * value changed again since, the next sync meets that as a new conflict.
   */
  async settle(key: string, res: Resolution): Promise<void> {
    this.check();
    if (res.deferred) throw new DalvError("invalid", `settle ${JSON.stringify(key)}: deferToInbox does not settle a conflict`);
    if (!this.core.state.inbox.has(key)) throw new DalvError("no_conflict", `settle ${JSON.stringify(key)}: no deferred conflict on this key`);
    const st = this.core.state;
    const remoteNow = st.part("").get(key)?.v;
    let ops: Op[] = [];
    if (st.pend.has(key) || !valuesEqual(res.value, remoteNow)) {
      ops = [res.value === undefined ? { kind: "delete", key } : { kind: "put", key, value: res.value }];
      checkOps(ops, st.config);
    }
    await this.core.writeLocal(ops, (tx, patch, t) => {
      tx.objectStore(S.inbox).delete(key);
      patch.inbox.push([key, null]);
      t.inbox.push(key);
    });
    this.kickLeader();
  }

  /** refused returns the batches the server refused for another reason than a conflict, oldest first. */
  refused(): RefusedBatch[] {
    this.check();
    return [...this.core.state.refused.values()].sort((a, b) => a.id - b.id);
  }

  /** dropRefused forgets the refused batch id, once the application has dealt with it. */
  dropRefused(id: number): Promise<void> {
    this.check();
    return this.core.dropRefused(id);
  }

  /**
   * subscribe calls fn with every change to a key under prefix ("" for all)
   * in the user's partition, local or remote, made in this tab or another,
   * in the order this tab applied them, until the returned function is called.
   */
  subscribe(prefix: string, fn: (c: Change) => void): () => void {
    return this.subscribePart("", prefix, fn);
  }

  /** onStatus calls fn with the status each time it changes, until the returned function is called. */
  onStatus(fn: (s: SyncStatus) => void): () => void {
    this.statusSubs.add(fn);
    return () => this.statusSubs.delete(fn);
  }

  /** status is the replica's sync state: the leader tab's, as this tab last heard it. */
  get status(): SyncStatus {
    const st = this.core.state;
    const s = this.leaderStatus;
    return {
      ...s,
      leader: this.tabs.leader,
      pending: st.pendingCount,
      version: st.versions.get("") ?? 0,
      conflicts: st.inbox.size,
      refused: st.refused.size,
    };
  }

  /**
   * start makes this tab take part in syncing: it waits to be the leader (at
   * once when no other tab is), then syncs, keeps a watch open, pulls every
   * resyncEveryMs, and retries with backoff while the server is unreachable.
   */
  start(): void {
    this.check();
    if (!this.syncer) throw new DalvError("no_server", "start: no serverUrl configured");
    this.wantSync = true;
    this.tabs.lead(() => {
      if (this.closed || !this.wantSync) return;
      // The tab before may have committed a last transaction it had no
      // time to tell: start from what the database holds.
      void this.core.rereadAll().then(
        (patch) => {
          if (this.closed || !this.wantSync) return;
          this.publish(patch);
          this.syncer?.start();
        },
        () => this.syncer?.start(),
      );
    });
  }

  /** stop stops syncing in this tab and gives the lead to another tab; pending writes stay pending. */
  stop(): void {
    this.wantSync = false;
    this.syncer?.stop();
    this.tabs.resign();
  }

  /**
   * sync exchanges with the server once (in the leader tab; another tab asks
   * the leader and resolves at its next successful sync). It rejects with
   * the error when the exchange failed.
   */
  async sync(): Promise<void> {
    this.check();
    if (!this.syncer) throw new DalvError("no_server", "sync: no serverUrl configured");
    const syncer = this.syncer;
    if (this.tabs.leader) return syncer.sync();
    if (await this.tabs.ifFree(() => syncer.sync())) return;
    const t0 = Date.now();
    return new Promise<void>((resolve) => {
      const off = this.onStatus((s) => {
        if (s.lastSync >= t0) {
          off();
          resolve();
        }
      });
      this.tabs.post({ t: "kick" });
    });
  }

  /** shared returns a read-only view of the shared partition name, which options.shared must name. */
  shared(name: string): SharedPartition {
    if (!(this.options.shared ?? []).includes(name)) throw new DalvError("invalid", `shared partition ${JSON.stringify(name)} is not in options.shared`);
    return createSharedPartition(this.core.state, name, (prefix, fn) => this.subscribePart(name, prefix, fn), () => this.check());
  }

  /** close stops syncing and closes the database; pending writes stay for the next open. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.syncer?.stop();
    this.tabs.close();
    this.subs.clear();
    this.statusSubs.clear();
    if (typeof removeEventListener === "function") removeEventListener("online", this.onlineListener);
    this.db.close();
  }

  private check(): void {
    if (this.closed) throw new DalvError("closed", "the replica is closed");
  }

  private subscribePart(part: string, prefix: string, fn: (c: Change) => void): () => void {
    const s: Subscription = { part, prefix, fn };
    this.subs.add(s);
    return () => this.subs.delete(s);
  }

  private kickLeader(): void {
    if (this.tabs.leader) this.syncer?.kick();
  }

  /** committed makes a transaction of this tab current in memory and tells the other tabs. */
  private committed(patch: Patch, touched: Touched): void {
    this.tabs.post({ t: "patch", touched });
    this.publish(patch);
  }

  private publish(patch: Patch): void {
    const pendingBefore = this.core.state.pendingCount;
    const changes = this.core.state.apply(patch);
    for (const c of changes) {
      for (const s of this.subs) {
        if (s.part === c.partition && c.key.startsWith(s.prefix)) {
          try {
            s.fn(c);
          } catch (e) {
            reportError(e);
          }
        }
      }
    }
    if (patch.pendingCount !== pendingBefore || patch.inbox.length > 0 || patch.refused.length > 0 || patch.versions.length > 0) this.emitStatus();
  }

  private async message(m: Message): Promise<void> {
    if (this.closed) return;
    switch (m.t) {
      case "patch": {
        const patch = await this.core.reread(m.touched).catch(() => undefined);
        if (!patch || this.closed) return;
        this.publish(patch);
        if (m.touched.pending && !m.touched.remote) this.kickLeader();
        return;
      }
      case "status":
        if (this.tabs.leader) return;
        this.leaderStatus = {
          online: m.online,
          watching: m.watching,
          lastSync: m.lastSync,
          lastError: m.error && new DalvError(m.error.code, m.error.message, { serverCode: m.error.serverCode }),
        };
        this.emitStatus();
        return;
      case "kick":
        if (this.tabs.leader) {
          this.syncer?.kick();
          this.broadcastStatus();
        }
        return;
    }
  }

  private loopStatus(s: LoopStatus): void {
    this.leaderStatus = s;
    this.broadcastStatus();
    this.emitStatus();
  }

  private broadcastStatus(): void {
    const s = this.leaderStatus;
    const e = s.lastError;
    // An error crosses as its fields: a DalvError's code does not survive structured cloning.
    this.tabs.post({ t: "status", online: s.online, watching: s.watching, lastSync: s.lastSync, error: e && { code: e.code, message: e.message, serverCode: e.serverCode } });
  }

  private emitStatus(): void {
    if (this.statusSubs.size === 0) return;
    const s = this.status;
    for (const fn of this.statusSubs) {
      try {
        fn(s);
      } catch (e) {
        reportError(e);
      }
    }
  }
}

function reportError(e: unknown): void {
  setTimeout(() => {
    throw e;
  });
}

/** bytes encodes a string as UTF-8, for list items and scalars. */
export const bytes = bytesOf;
