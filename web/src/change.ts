import type { Value } from "./value.js";

/** Change is what a subscriber is told: a key whose value as the device sees it changed. */
export interface Change {
  /** The partition: "" for the user's own, else the shared partition's name. */
  readonly partition: string;
  /** The key. */
  readonly key: string;
  /** What the key holds now; undefined where deleted. */
  readonly value: Value | undefined;
  /** Whether the change came from the server (else a local write). */
  readonly remote: boolean;
}

/** Item is one key and its value, as Replica.list returns them. */
export interface Item {
  /** The key. */
  readonly key: string;
  /** What the key holds as the device sees it. */
  readonly value: Value;
}
