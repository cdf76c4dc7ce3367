import { DalvError } from "../errors.js";
import type { Op } from "../op.js";
import type { Value } from "../value.js";
import { bytesEqual, isList, valueSize } from "../value.js";
import type { RuleChecker } from "../rule-checker.js";

/** ServerConfig is what the device knows of the server: the defaults until first contact, then what GetConfig said. */
export interface ServerConfig {
  systemPrefixes: string[];
  readable: string[];
  maxKeyBytes: number;
  maxValueBytes: number;
  maxOps: number;
  maxRequestBytes: number;
  maxResponseBytes: number;
  user: string;
  /** The server's write rules in their JSON form, empty for none (see checkRules). */
  rules?: string;
}

/** defaultConfig is the server's zero-config defaults, assumed before first contact. */
export function defaultConfig(): ServerConfig {
  return {
    systemPrefixes: ["sys/"],
    readable: [],
    maxKeyBytes: 1024,
    maxValueBytes: 1 << 20,
    maxOps: 1000,
    maxRequestBytes: 8 << 20,
    maxResponseBytes: 4 << 20,
    user: "",
  };
}

const utf8 = new TextEncoder();

/** checkKey refuses a key the server would refuse for its shape or size. */
export function checkKey(key: string, cfg: ServerConfig): void {
  if (key === "") throw new DalvError("invalid", "empty key");
  const n = utf8.encode(key).length;
  if (n > cfg.maxKeyBytes) {
    throw new DalvError("limit", `key "${key.slice(0, 40)}…" is ${n} bytes, over the server's key limit of ${cfg.maxKeyBytes} bytes`);
  }
  for (const ch of key) {
    const c = ch.codePointAt(0) ?? 0;
    if (c < 0x20 || c === 0x7f || (c >= 0x80 && c < 0xa0) || (c >= 0xd800 && c < 0xe000)) {
      throw new DalvError("invalid", `key ${JSON.stringify(key)} contains the control character U+${c.toString(16).toUpperCase().padStart(4, "0")}`);
    }
  }
}

/** checkWritable refuses a device write to a system-domain key. */
export function checkWritable(key: string, cfg: ServerConfig): void {
  checkKey(key, cfg);
  const p = cfg.systemPrefixes.find((s) => key.startsWith(s));
  if (p !== undefined) {
    throw new DalvError("system_key", `write ${JSON.stringify(key)}: keys under "${p}" are system-domain, read-only on devices (only backends write them)`);
  }
}

/** checkValue refuses a value over the server's value limit, or a list with a duplicate item. */
export function checkValue(key: string, v: Value | undefined, cfg: ServerConfig): void {
  if (v === undefined) return;
  const n = valueSize(v);
  if (n > cfg.maxValueBytes) {
    throw new DalvError("limit", `write ${JSON.stringify(key)}: the key would hold ${n} bytes, over the server's value limit of ${cfg.maxValueBytes} bytes`);
  }
  if (isList(v)) {
    for (let i = 0; i < v.list.length; i++) {
      for (let j = 0; j < i; j++) {
        if (bytesEqual(v.list[i] as Uint8Array, v.list[j] as Uint8Array)) {
          throw new DalvError("invalid", `write ${JSON.stringify(key)}: the list holds a duplicate item`);
        }
      }
    }
  }
}

// The rule checker of the replica opened last (ReplicaOptions.checkRules):
// the page's replicas share it, as they share the server's rules.
let ruleChecker: RuleChecker | undefined;

/** useRuleChecker makes checkRule use c (none when undefined). */
export function useRuleChecker(c: RuleChecker | undefined): void {
  ruleChecker = c;
}

/** checkRule refuses op, which takes its key from cur to next, when the server's write rules would and a rule checker is in use. */
export function checkRule(op: Op, cur: Value | undefined, next: Value | undefined, cfg: ServerConfig): void {
  const r = cfg.rules && ruleChecker?.(cfg.rules, op, cur, next);
  if (r) throw new DalvError("rule", r.message, { serverCode: r.code });
}

/** checkOpCount refuses a transaction of n ops, over the server's op limit. */
export function checkOpCount(n: number, cfg: ServerConfig): void {
  if (n > cfg.maxOps) throw new DalvError("limit", `${n} ops in one transaction, over the server's limit of ${cfg.maxOps} ops per sync`);
}

/** checkOps refuses a batch over the server's op limit, or with an op the server would refuse. */
export function checkOps(ops: readonly Op[], cfg: ServerConfig): void {
  checkOpCount(ops.length, cfg);
  for (const op of ops) {
    checkWritable(op.key, cfg);
    if (op.kind === "put") checkValue(op.key, op.value, cfg);
    if ((op.kind === "listAdd" || op.kind === "listRemove") && op.elem.length > cfg.maxValueBytes) {
      throw new DalvError("limit", `write ${JSON.stringify(op.key)}: a list item of ${op.elem.length} bytes, over the server's value limit of ${cfg.maxValueBytes} bytes`);
    }
  }
}
