import type { Resolver } from "./conflict.js";
import type { RefusedBatch } from "./refused-batch.js";
import type { RuleChecker } from "./rule-checker.js";

/** ReplicaOptions configures openReplica. */
export interface ReplicaOptions {
  /**
   * The IndexedDB database holding the replica. One name is one replica:
   * every tab of the origin that opens it shares it. By default "dalv".
   */
  name?: string;
  /** The DalvDB server's base URL ("https://sync.example.com"). By default none: the replica works offline only. */
  serverUrl?: string;
  /**
   * Returns the user's token (a JWT) for the server. It is asked again when
   * the server answers unauthenticated, and the request is retried once.
   * Required with serverUrl.
   */
  token?: () => Promise<string> | string;
  /**
   * Decides conflicting keys. By default every conflict is deferred to the
   * inbox (Replica.conflicts), so nothing is lost until the application settles it.
   */
  resolver?: Resolver;
  /** The shared partitions to keep (pulled and watched, read through Replica.shared). By default none. */
  shared?: string[];
  /** The shortest wait between retries while the server is unreachable, in ms. By default 200. */
  retryMinMs?: number;
  /** The longest wait between retries while the server is unreachable, in ms. By default 30000. */
  retryMaxMs?: number;
  /** How often the leader tab pulls even when the watch is quiet, in ms. By default 300000 (5 minutes). */
  resyncEveryMs?: number;
  /** The rounds of resolve-and-resend one batch may take in one sync. By default 10. */
  maxConflictRounds?: number;
  /** How many resource_exhausted answers in a row a batch that passes the local checks gets before it is set aside. By default 8. */
  maxLimitRetries?: number;
  /**
   * Checks each local write against the server's write rules before it is
   * queued, and each queued batch before it is sent (the rules may have
   * changed since): pass checkRules from "@dalvdb/client/rules". A write
   * it refuses fails with a DalvError of code "rule"; a queued batch it
   * refuses is set aside and reported as a server refusal is. By default
   * none: the server refuses such a batch, which is set aside then.
   */
  checkRules?: RuleChecker;
  /** Called in the leader tab for each batch the server refused, after it was set aside. By default nothing. */
  onRefused?: (b: RefusedBatch) => void;
  /**
   * Called when a newer version of this package opened the replica in
   * another tab: this tab's replica is closed and the page should reload.
   * By default nothing (the replica is closed all the same).
   */
  onOutdated?: () => void;
  /** Whether the replica starts syncing at open, when serverUrl is set. By default true. */
  autoStart?: boolean;
}
