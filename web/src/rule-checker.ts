import type { Op } from "./op.js";
import type { Value } from "./value.js";

/** RuleRefusal is why the server's write rules refuse a write. */
export interface RuleRefusal {
  /** The rule: its match pattern, or "default: refuse". */
  rule: string;
  /** What failed. */
  reason: string;
  /** The message, as the server words it: the key, the rule and the reason. */
  message: string;
  /** The Connect code the server gives the refusal. */
  code: "permission_denied" | "invalid_argument";
}

/**
 * RuleChecker checks a device's op, which takes its key from cur to next,
 * against the server's write rules (rules, their JSON form as GetConfig
 * gives it): the refusal, or undefined when they allow it. checkRules from
 * "@dalvdb/client/rules" is one; ReplicaOptions.checkRules takes it.
 */
export type RuleChecker = (rules: string, op: Op, cur: Value | undefined, next: Value | undefined) => RuleRefusal | undefined;
