import type { Item } from "./change.js";
import { DalvError } from "./errors.js";
import type { Op } from "./op.js";
import { applyOps } from "./op.js";
import type { ServerConfig } from "./private/config.js";
import { checkOpCount, checkRule, checkValue, checkWritable } from "./private/config.js";
import type { State } from "./private/state.js";
import { compareKeys } from "./private/state.js";
import type { Value } from "./value.js";
import { isList } from "./value.js";

const utf8 = new TextEncoder();

/** bytesOf encodes a string as UTF-8; bytes pass as they are. */
export function bytesOf(b: Uint8Array | string): Uint8Array {
  return typeof b === "string" ? utf8.encode(b) : b;
}

/**
 * Tx is a transaction of local writes, built inside Replica.update: its
 * reads see the replica with the transaction's own writes applied, and its
 * writes become one pending batch, durable together and sent to the server
 * as one commit (never split). A Tx is valid only inside its update call.
 */
export class Tx {
  /** The transaction's ops, in order. */
  readonly ops: Op[] = [];
  private readonly mine = new Map<string, Value | undefined>();

  /** @internal */
  constructor(
    private readonly state: State,
    private readonly cfg: ServerConfig,
  ) {}

  /** get returns key's value as the transaction sees it; undefined where absent. */
  get(key: string): Value | undefined {
    return this.mine.has(key) ? this.mine.get(key) : this.state.view("", key);
  }

  /** getJSON decodes the JSON scalar at key; undefined where absent. */
  getJSON<T = unknown>(key: string): T | undefined {
    return decodeJSON<T>(key, this.get(key));
  }

  /** list returns the keys under prefix as the transaction sees them, in key order. */
  list(prefix = ""): Item[] {
    const keys = new Set(this.state.keys("", prefix));
    for (const k of this.mine.keys()) if (k.startsWith(prefix)) keys.add(k);
    const out: Item[] = [];
    for (const k of [...keys].sort(compareKeys)) {
      const v = this.get(k);
      if (v !== undefined) out.push({ key: k, value: v });
    }
    return out;
  }

  /** put sets key to a scalar (bytes or a string, as UTF-8) or to a value. */
  put(key: string, v: Uint8Array | string | Value): void {
    const value: Value = v instanceof Uint8Array || typeof v === "string" ? { scalar: bytesOf(v) } : v;
    this.add({ kind: "put", key, value });
  }

  /** putJSON sets key to v encoded as JSON. */
  putJSON(key: string, v: unknown): void {
    const text = JSON.stringify(v);
    if (text === undefined) throw new DalvError("invalid", `write ${JSON.stringify(key)}: the value has no JSON encoding`);
    this.put(key, text);
  }

  /** delete removes key. */
  delete(key: string): void {
    this.add({ kind: "delete", key });
  }

  /** listAdd appends elem to the list at key unless it is already there. List ops from several devices merge without a conflict. */
  listAdd(key: string, elem: Uint8Array | string): void {
    this.add({ kind: "listAdd", key, elem: bytesOf(elem) });
  }

  /** listRemove removes elem from the list at key if it is there. */
  listRemove(key: string, elem: Uint8Array | string): void {
    this.add({ kind: "listRemove", key, elem: bytesOf(elem) });
  }

  private add(op: Op): void {
    checkWritable(op.key, this.cfg);
    const cur = this.get(op.key);
    if ((op.kind === "listAdd" || op.kind === "listRemove") && cur !== undefined && !isList(cur)) {
      throw new DalvError("not_list", `${op.kind} ${JSON.stringify(op.key)}: the key holds a scalar, not a list`);
    }
    const next = applyOps(cur, [op]);
    checkValue(op.key, next, this.cfg);
    checkRule(op, cur, next, this.cfg);
    checkOpCount(this.ops.length + 1, this.cfg);
    this.ops.push(op);
    this.mine.set(op.key, next);
  }
}

const text = new TextDecoder();

/** decodeJSON decodes the JSON scalar v of key. */
export function decodeJSON<T>(key: string, v: Value | undefined): T | undefined {
  if (v === undefined) return undefined;
  if (isList(v)) throw new DalvError("not_list", `getJSON ${JSON.stringify(key)}: the key holds a list, not a JSON scalar`);
  try {
    return JSON.parse(text.decode(v.scalar)) as T;
  } catch (e) {
    throw new DalvError("invalid", `getJSON ${JSON.stringify(key)}: the value is not JSON: ${(e as Error).message}`, { cause: e });
  }
}
