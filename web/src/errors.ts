/**
 * What went wrong, as a stable string a program can switch on. The codes of
 * local refusals mirror the Go SDK's errors (ErrSystemKey is "system_key");
 * a refusal by the server carries the server's Connect code instead.
 */
export type DalvErrorCode =
  /** A read of a key the replica does not hold. */
  | "not_found"
  /** A device write to a system-domain key: only backends write those. */
  | "system_key"
  /** A write to a shared partition, which devices only read. */
  | "read_only"
  /** A write over one of the server's limits (key, value, ops per commit). */
  | "limit"
  /** A malformed write: an empty key, a key with control characters, bad JSON. */
  | "invalid"
  /** A write the server's write rules refuse; serverCode is the code the server gives it, and the message names the rule. */
  | "rule"
  /** A list op on a key holding a scalar, or a list read of a scalar. */
  | "not_list"
  /** A method of a closed replica. */
  | "closed"
  /** A token for another user than the one whose data the replica holds. */
  | "wrong_user"
  /** Sync or start without a server URL. */
  | "no_server"
  /** A batch still conflicting after the allowed rounds of resolving. */
  | "conflict_rounds"
  /** Settle of a key without a deferred conflict. */
  | "no_conflict"
  /** A replica written by a newer version of this package: reload the page. */
  | "outdated"
  /** The browser's storage failed (quota, a closed database). */
  | "storage"
  /** The server could not be reached. */
  | "unavailable"
  /** The server refused the request; the message gives its Connect code. */
  | "server";

/**
 * DalvError is the one error class of the package: every rejected promise
 * and every thrown error carries one, with a code and a message that says
 * what was wrong in words a person understands.
 */
export class DalvError extends Error {
  override name = "DalvError";
  /** The kind of error. */
  readonly code: DalvErrorCode;
  /** The server's Connect code ("permission_denied") when the server answered with an error. */
  readonly serverCode: string | undefined;

  constructor(code: DalvErrorCode, message: string, options?: { cause?: unknown; serverCode?: string }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.serverCode = options?.serverCode;
  }
}
