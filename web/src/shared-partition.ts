import type { Change, Item } from "./change.js";
import { DalvError } from "./errors.js";
import type { State } from "./private/state.js";
import { decodeJSON } from "./tx.js";
import type { Value } from "./value.js";

/** SharedPartition is a read-only view of a shared partition: backends write it, the device keeps a copy. */
export interface SharedPartition {
  /** The partition's name. */
  readonly name: string;
  /** The partition version the device has synced to. */
  readonly version: number;
  /** get returns key's value; undefined where absent. */
  get(key: string): Value | undefined;
  /** getJSON decodes the JSON scalar at key; undefined where absent. */
  getJSON<T = unknown>(key: string): T | undefined;
  /** list returns the keys under prefix, in key order. */
  list(prefix?: string): Item[];
  /** subscribe calls fn with every change under prefix until the returned function is called. */
  subscribe(prefix: string, fn: (c: Change) => void): () => void;
  /** put always rejects with "read_only": devices never write shared partitions. */
  put(key: string, v: unknown): Promise<never>;
  /** delete always rejects with "read_only". */
  delete(key: string): Promise<never>;
}

/** createSharedPartition returns the view of partition name over the replica's state. */
export function createSharedPartition(
  state: State,
  name: string,
  subscribe: (prefix: string, fn: (c: Change) => void) => () => void,
  check: () => void,
): SharedPartition {
  const refuse = (what: string, key: string) =>
    Promise.reject(new DalvError("read_only", `${what} ${JSON.stringify(key)} in shared partition ${JSON.stringify(name)}: shared partitions are read-only on devices`));
  return {
    name,
    get version() {
      return state.versions.get(name) ?? 0;
    },
    get(key) {
      check();
      return state.view(name, key);
    },
    getJSON<T>(key: string) {
      check();
      return decodeJSON<T>(key, state.view(name, key));
    },
    list(prefix = "") {
      check();
      return state.keys(name, prefix).map((k) => ({ key: k, value: state.view(name, k) as Value }));
    },
    subscribe,
    put: (key) => refuse("put", key),
    delete: (key) => refuse("delete", key),
  };
}
