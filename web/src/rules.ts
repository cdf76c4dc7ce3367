/**
 * @dalvdb/client/rules: the device's check of the server's write rules,
 * kept out of the main bundle (it costs about 0.8 KB gzipped). Pass it to
 * openReplica to refuse locally, before a write is queued, what the rules
 * refuse:
 *
 *   import { checkRules } from "@dalvdb/client/rules";
 *   const r = await openReplica({ serverUrl, token, checkRules });
 *
 * It checks what GetConfig's JSON form of the rules lets a device check
 * cheaply: who writes a key, its kind, its size, its item count, and
 * whether it may be deleted or rewritten. A rule's JSON Schema and CEL
 * check are left to the server, which refuses the batch then; it is set
 * aside and reported as every refused batch is.
 *
 * @module
 */
import type { Op } from "./op.js";
import type { RuleChecker, RuleRefusal } from "./rule-checker.js";
import type { Value } from "./value.js";
import { isList, valueSize } from "./value.js";

interface RuleSpec {
  match: string;
  writer?: string;
  kind?: string;
  max_bytes?: number;
  max_items?: number;
  delete?: boolean;
  create_only?: boolean;
}

interface Rule extends RuleSpec {
  segs: string[];
  literals: number;
  rest: boolean;
  firstWild: number;
}

interface Compiled {
  refuse: boolean;
  rules: Rule[];
}

// The rules last compiled, by their source: every write checks them.
let last: { src: string; c: Compiled | undefined } = { src: "", c: undefined };

/** compile reads the rules' JSON form, most specific rule first; undefined for none, or for a form this version cannot read (the server checks every write then). */
function compile(src: string): Compiled | undefined {
  if (src === last.src) return last.c; // "" too: no rules
  let c: Compiled | undefined;
  try {
    const f = JSON.parse(src) as { default?: string; rules?: RuleSpec[] };
    const rules = (f.rules ?? []).map((r): Rule => {
      const segs = r.match.split("/");
      const firstWild = segs.findIndex((s) => s === "*" || s === "**");
      return { ...r, segs, literals: segs.filter((s) => s !== "*" && s !== "**").length, rest: segs.at(-1) === "**", firstWild: firstWild < 0 ? segs.length : firstWild };
    });
    // The server's order: more literal segments, then no "**", then a later first wildcard, then file order (sort is stable).
    rules.sort((a, b) => b.literals - a.literals || Number(a.rest) - Number(b.rest) || b.firstWild - a.firstWild);
    c = { refuse: f.default === "refuse", rules };
  } catch {
    c = undefined;
  }
  last = { src, c };
  return c;
}

/** matches reports whether key matches the rule's pattern: "*" is one segment, a last "**" one or more. */
function matches(r: Rule, key: string): boolean {
  const ks = key.split("/");
  for (let i = 0; i < r.segs.length; i++) {
    const p = r.segs[i];
    if (p === "**") return ks.length > i;
    if (i >= ks.length || (p !== "*" && p !== ks[i])) return false;
  }
  return ks.length === r.segs.length;
}

const text = new TextDecoder("utf-8", { fatal: true });

/**
 * checkRules is a RuleChecker: the refusal the server's write rules (src,
 * their JSON form) give a device's op, which takes its key from cur to
 * next, as far as a device can tell; undefined when they allow it.
 */
export const checkRules: RuleChecker = (src: string, op: Op, cur: Value | undefined, next: Value | undefined): RuleRefusal | undefined => {
  const c = compile(src);
  if (c === undefined) return undefined;
  const r = c.rules.find((r) => matches(r, op.key));
  const refusal = (rule: string, reason: string, code: RuleRefusal["code"]): RuleRefusal => ({
    rule,
    reason,
    message: `key ${JSON.stringify(op.key)} refused by rule ${JSON.stringify(rule)}: ${reason}`,
    code,
  });
  const denied = (rule: string, reason: string) => refusal(rule, reason, "permission_denied");
  const invalid = (reason: string) => refusal(r?.match ?? "", reason, "invalid_argument");
  if (r === undefined) return c.refuse ? denied("default: refuse", "no rule matches the key") : undefined;
  if (r.writer === "backend") return denied(r.match, "only backends may write it (writer: backend)");
  if (op.kind === "delete") return r.delete === false ? denied(r.match, "it may not be deleted (delete: false)") : undefined;
  if (r.create_only && cur !== undefined) return denied(r.match, "it is written once and already holds a value (create_only)");
  if (next === undefined) return undefined;
  const list = isList(next);
  if ((r.kind === "scalar" || r.kind === "json") && list) return invalid(`it holds a ${r.kind}, not a list`);
  if (r.kind === "list" && !list) return invalid("it holds a list, not a scalar");
  const n = valueSize(next);
  if (r.max_bytes && n > r.max_bytes) return invalid(`the value is ${n} bytes, over max_bytes ${r.max_bytes}`);
  if (r.max_items && list && next.list.length > r.max_items) return invalid(`the list holds ${next.list.length} items, over max_items ${r.max_items}`);
  if (r.kind === "json" && !list) {
    try {
      JSON.parse(text.decode(next.scalar));
    } catch {
      return invalid("the value is not JSON (kind: json)");
    }
  }
  return undefined;
};
