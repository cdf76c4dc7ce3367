import type { DalvError } from "./errors.js";

/** SyncStatus is a snapshot of the replica's sync state, as the tab that syncs sees it. */
export interface SyncStatus {
  /** Whether the last exchange with the server succeeded; false before the first. */
  readonly online: boolean;
  /** Whether the live watch of the user's partition is open. */
  readonly watching: boolean;
  /** Whether this tab is the one that syncs. */
  readonly leader: boolean;
  /** The number of local batches not yet acknowledged by the server. */
  readonly pending: number;
  /** The partition version of the user's data the replica has synced to. */
  readonly version: number;
  /** When the last sync completed (milliseconds since the epoch); 0 before the first. */
  readonly lastSync: number;
  /** The last error of a sync or watch; undefined after a success. */
  readonly lastError: DalvError | undefined;
  /** The number of deferred conflicts in the inbox. */
  readonly conflicts: number;
  /** The number of batches the server refused, set aside. */
  readonly refused: number;
}
