import type { Conflict } from "../conflict.js";
import type { Op } from "../op.js";
import type { RefusedBatch } from "../refused-batch.js";
import type { Value } from "../value.js";

/** Entry is one synced key. */
export interface Entry {
  readonly p: string;
  readonly k: string;
  readonly v: Value;
  readonly ver: number;
}

/**
 * PKey is one key of the user's partition with pending ops, as reads and
 * the sync see it: base is the synced value the ops apply to, local what
 * reads show. u, when not 0, is the version of the first remote change to
 * the key the device has not shown (the key is dirty): the next sync sends
 * a base below it so the server reports the key as a conflict. ul is the
 * same bound for list ops, which conflict only with scalar changes.
 */
export interface PKey {
  readonly key: string;
  readonly base: Value | undefined;
  readonly ops: readonly Op[];
  readonly local: Value | undefined;
  readonly u: number;
  readonly ul: number;
}

/**
 * Anchor is what the database keeps of a pending key beyond its ops (which
 * are the queue's): written by the tab that syncs, whenever what the ops
 * apply to is no longer what the first batch holding them saw.
 */
export type Anchor = Omit<PKey, "ops" | "local">;

/**
 * Batch is one pending transaction (or several, merged), sent as one Sync.
 * v and bases are what the writing tab showed when it wrote the batch: its
 * version of the user's partition, and each key's value before the batch.
 * They make a key's base when no anchor says otherwise, so that a write
 * reads nothing from the database.
 */
export interface Batch {
  /** Its place in the queue and the batch number the server sees; a rewritten batch gets a new one. */
  readonly seq: number;
  readonly ops: readonly Op[];
  readonly v?: number;
  readonly bases?: ReadonlyMap<string, Value | undefined>;
}

/** InboxRecord is a deferred conflict as stored. */
export type InboxRecord = Conflict;

/** RefusedRecord is a refused batch as stored. */
export type RefusedRecord = RefusedBatch;

/** Touched names what a transaction changed, for the other tabs to read again. */
export interface Touched {
  kv: [string, string][];
  resetParts: string[];
  pkeys: string[];
  inbox: string[];
  refused: number[];
  versions: string[];
  pending: boolean;
  config: boolean;
  remote: boolean;
}

export function emptyTouched(remote: boolean): Touched {
  return { kv: [], resetParts: [], pkeys: [], inbox: [], refused: [], versions: [], pending: false, config: false, remote };
}
