import type { Op } from "./op.js";

/**
 * RefusedBatch is a batch the server refused for another reason than a
 * conflict (permission, a limit, a bad value). It was set aside: its ops no
 * longer show in reads, and the batches after it went on.
 */
export interface RefusedBatch {
  /** Identifies it for Replica.dropRefused. */
  readonly id: number;
  /** The batch's ops. */
  readonly ops: readonly Op[];
  /** The server's Connect code, as in "permission_denied". */
  readonly code: string;
  /** The server's explanation. */
  readonly message: string;
  /** When it was set aside (milliseconds since the epoch). */
  readonly at: number;
}
