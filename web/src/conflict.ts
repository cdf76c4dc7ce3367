import type { Value } from "./value.js";

/**
 * Conflict is one key on which the device's pending writes met a change on
 * the server the device had not seen: the resolver (or, deferred, the
 * application through the inbox) decides what the key holds.
 */
export interface Conflict {
  /** The key. */
  readonly key: string;
  /** For a field handed to mergeJSONWith's fallback: its path ("address.city"); else undefined. */
  readonly field?: string;
  /** What the device last synced for the key; undefined where absent. */
  readonly base: Value | undefined;
  /** What the device shows, its pending writes applied; undefined where deleted. */
  readonly local: Value | undefined;
  /** What the server holds now; undefined where deleted. */
  readonly remote: Value | undefined;
  /** The partition version the remote side is from. */
  readonly version: number;
  /** When the conflict was deferred to the inbox (milliseconds since the epoch); 0 before. */
  readonly at: number;
  /** Why the conflict was deferred when the resolver did not ask it (its value was refused). */
  readonly note?: string;
}

/** Resolution is a resolver's decision for one key: a value to hold, or a deferral to the inbox. */
export type Resolution = { readonly deferred: false; readonly value: Value | undefined } | { readonly deferred: true };

/**
 * Resolver decides what a conflicting key holds. It is called once per
 * conflicting key by the tab that syncs, and returns use(value) (undefined
 * deletes the key) or deferToInbox(). It must not write to the replica.
 */
export type Resolver = (c: Conflict) => Resolution;

/** use resolves a conflict with v: the key holds v (undefined: absent) here and, after the next sync, on the server. */
export function use(v: Value | undefined): Resolution {
  return { deferred: false, value: v };
}

/**
 * deferToInbox keeps a conflict for later: the device shows the server's
 * value, drops its own pending ops on the key, and keeps base, local and
 * remote in the inbox (Replica.conflicts) until the application settles it.
 */
export function deferToInbox(): Resolution {
  return { deferred: true };
}

/** serverWins is a Resolver that keeps the server's value, dropping the device's pending ops on the key. */
export const serverWins: Resolver = (c) => use(c.remote);

/** clientWins is a Resolver that keeps the device's value, overwriting the remote change. */
export const clientWins: Resolver = (c) => use(c.local);
