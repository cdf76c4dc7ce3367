import { DalvError } from "../errors.js";

/**
 * FORMAT is the replica's storage format, kept as the IndexedDB database
 * version: a replica of an older format is upgraded on open (upgrade below),
 * and tabs still running an older package are told to reload.
 */
export const FORMAT = 1;

/** The object stores of a replica. */
export const S = {
  /** Synced values, in chunks: {p: partition, b: bucket, m: key → {v: Value, ver: version}}, keyed [p, b]. */
  kv: "kv",
  /** Keys with pending ops: PKey records keyed by key. */
  pkeys: "pkeys",
  /** Pending batches, keyed by their sequence number, in order. */
  pending: "pending",
  /** Deferred conflicts, keyed by key. */
  inbox: "inbox",
  /** Batches the server refused, keyed by id. */
  refused: "refused",
  /** The device id, the server's config, the partitions' versions, the batch counter. */
  meta: "meta",
} as const;

/**
 * upgrade brings a database from format `from` (0: new) to FORMAT, inside
 * the versionchange transaction, so that no write of an older tab is lost:
 * records are moved, never dropped.
 */
function upgrade(db: IDBDatabase, from: number): void {
  if (from < 1) {
    db.createObjectStore(S.kv, { keyPath: ["p", "b"] });
    db.createObjectStore(S.pkeys, { keyPath: "key" });
    db.createObjectStore(S.pending, { keyPath: "seq" });
    db.createObjectStore(S.inbox, { keyPath: "key" });
    db.createObjectStore(S.refused, { keyPath: "id" });
    db.createObjectStore(S.meta);
  }
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
    r.onupgradeneeded = (ev) => upgrade(r.result, ev.oldVersion);
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
