import { DalvError } from "../errors.js";

/**
 * FORMAT is the replica's storage format, kept as the IndexedDB database
 * version: a replica of an older format is upgraded on open (upgrade below),
 * and tabs still running an older package are told to reload.
 */
export const FORMAT = 2;

/** The object stores of a replica. */
export const S = {
  /** Synced values, in chunks: {p: partition, b: bucket, m: key → {v: Value, ver: version}}, keyed [p, b]. */
  kv: "kv",
  /**
   * Anchors of keys with pending ops, keyed by key: the base their ops
   * apply to and their dirty bounds, written by the tab that syncs. A key's
   * ops are those of the queue.
   */
  pkeys: "pkeys",
  /**
   * Pending batches, in order: keyed by seq, which the store generates and
   * which is also the batch number the server's idempotency check sees, so
   * that a local write is one put to this store and nothing else.
   */
  queue: "queue",
  /** Deferred conflicts, keyed by key. */
  inbox: "inbox",
  /** Batches the server refused, keyed by id. */
  refused: "refused",
  /** The device id, the server's config, the partitions' versions. */
  meta: "meta",
} as const;

/**
 * upgrade brings a database from format `from` (0: new) to FORMAT, inside
 * its versionchange transaction tx, so that no write of an older tab is
 * lost: records are moved, never dropped.
 */
function upgrade(db: IDBDatabase, tx: IDBTransaction, from: number): void {
  if (from < 1) {
    db.createObjectStore(S.kv, { keyPath: ["p", "b"] });
    db.createObjectStore(S.pkeys, { keyPath: "key" });
    db.createObjectStore(S.inbox, { keyPath: "key" });
    db.createObjectStore(S.refused, { keyPath: "id" });
    db.createObjectStore(S.meta);
  }
  if (from < 2) {
    const queue = db.createObjectStore(S.queue, { keyPath: "seq", autoIncrement: true });
    if (from === 1) upgradeFrom1(db, tx, queue).catch(() => tx.abort());
  }
}

/**
 * upgradeFrom1 moves format 1's pending batches to the queue. Format 1
 * numbered batches from a counter in meta and kept each batch's number in
 * `no`, increasing in queue order; the queue keys them by that number, and
 * its key generator is moved past the counter, so no number the device may
 * have sent is given again. Format 1's pending-key records serve as anchors
 * as they are (their ops and local fields are no longer read).
 */
async function upgradeFrom1(db: IDBDatabase, tx: IDBTransaction, queue: IDBObjectStore): Promise<void> {
  const meta = tx.objectStore(S.meta);
  const [batches, counter] = await Promise.all([req(tx.objectStore("pending").getAll()) as Promise<{ no: number; ops: unknown[] }[]>, req(meta.get("counter")) as Promise<number | undefined>]);
  let next = 1;
  for (const b of batches) {
    queue.put({ seq: b.no, ops: b.ops });
    next = b.no + 1;
  }
  if ((counter ?? 1) > next) {
    queue.put({ seq: (counter ?? 1) - 1, ops: [] });
    queue.delete((counter ?? 1) - 1);
  }
  meta.delete("counter");
  db.deleteObjectStore("pending");
}

/** openDatabase opens (creating or upgrading) the replica's database. */
export function openDatabase(name: string, factory: IDBFactory = indexedDB): Promise<IDBDatabase> {
  return new Promise((resolve, reject) => {
    let r: IDBOpenDBRequest;
    try {
      r = factory.open(name, FORMAT);
    } catch (e) {
      reject(storageError(e));
      return;
    }
    r.onupgradeneeded = (ev) => upgrade(r.result, r.transaction as IDBTransaction, ev.oldVersion);
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => {
      const e = r.error;
      if (e?.name === "VersionError") {
        reject(new DalvError("outdated", `replica "${name}" was written by a newer version of @dalvdb/client (format newer than ${FORMAT}): reload the page`, { cause: e }));
      } else {
        reject(storageError(e));
      }
    };
    r.onblocked = () => {
      // Older tabs close their connection on versionchange; the open goes
      // on when they have.
    };
  });
}

/** req turns an IndexedDB request into a promise. */
export function req<T>(r: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(storageError(r.error));
  });
}

/** done resolves when tx commits (durably, for a strict transaction) and rejects when it aborts. */
export function done(tx: IDBTransaction): Promise<void> {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(storageError(tx.error));
    tx.onabort = () => reject(storageError(tx.error ?? new Error("transaction aborted")));
  });
}

/** write opens a readwrite transaction over stores, durable when it completes. */
export function write(db: IDBDatabase, stores: string[]): IDBTransaction {
  try {
    return db.transaction(stores, "readwrite", { durability: "strict" });
  } catch (e) {
    throw storageError(e);
  }
}

/** read opens a readonly transaction over stores. */
export function read(db: IDBDatabase, stores: string[]): IDBTransaction {
  try {
    return db.transaction(stores, "readonly");
  } catch (e) {
    throw storageError(e);
  }
}

/** storageError wraps a browser storage failure. */
export function storageError(e: unknown): DalvError {
  if (e instanceof DalvError) return e;
  const msg = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
  return new DalvError("storage", `replica storage (IndexedDB) failed: ${msg}`, { cause: e });
}
