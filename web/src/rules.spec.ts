import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import type { Op } from "./op.js";
import { checkRule, defaultConfig, useRuleChecker } from "./private/config.js";
import { DalvError } from "./errors.js";
import { checkRules } from "./rules.js";
import type { Value } from "./value.js";

// The table the Go rules package runs too (rules/testdata/device_cases.json):
// the browser's check must agree with the server wherever it checks at all.
interface Case {
  name: string;
  op: Op["kind"];
  key: string;
  value?: string;
  elem?: string;
  old?: string;
  old_list?: string[];
  want: "allow" | "permission_denied" | "invalid_argument";
  rule?: string;
  device_checks?: boolean;
}
const file = JSON.parse(readFileSync(new URL("../../../rules/testdata/device_cases.json", import.meta.url), "utf8")) as { rules: unknown; cases: Case[] };
const rules = JSON.stringify(file.rules);
const b = (s: string) => new TextEncoder().encode(s);

function opOf(c: Case): Op {
  switch (c.op) {
    case "put":
      return { kind: "put", key: c.key, value: { scalar: b(c.value ?? "") } };
    case "delete":
      return { kind: "delete", key: c.key };
    default:
      return { kind: c.op, key: c.key, elem: b(c.elem ?? "") };
  }
}

function oldOf(c: Case): Value | undefined {
  if (c.old !== undefined) return { scalar: b(c.old) };
  if (c.old_list !== undefined) return { list: c.old_list.map(b) };
  return undefined;
}

function next(op: Op, old: Value | undefined): Value | undefined {
  switch (op.kind) {
    case "put":
      return op.value;
    case "delete":
      return undefined;
    default: {
      const items = old && "list" in old ? [...old.list] : [];
      return { list: op.kind === "listAdd" ? [...items, op.elem] : items };
    }
  }
}

test("checkRules agrees with the server on every write a device can check", () => {
  assert.ok(file.cases.length > 10);
  for (const c of file.cases) {
    const op = opOf(c);
    const old = oldOf(c);
    const r = checkRules(rules, op, old, next(op, old));
    if (c.want === "allow" || c.device_checks === false) {
      assert.equal(r, undefined, `${c.name}: refused locally (${r?.message}), want it left to the server`);
      continue;
    }
    assert.ok(r, `${c.name}: allowed locally, want ${c.want}`);
    assert.equal(r.code, c.want, c.name);
    assert.equal(r.rule, c.rule, c.name);
    assert.match(r.message, new RegExp(`^key "${c.key}" refused by rule "${c.rule?.replace(/[*]/g, "\\*")}": `), c.name);
  }
});

test("no rules, or rules this version cannot read, refuse nothing", () => {
  const op: Op = { kind: "put", key: "sys/x", value: { scalar: b("1") } };
  assert.equal(checkRules("", op, undefined, op.value), undefined);
  assert.equal(checkRules("{not json", op, undefined, op.value), undefined);
});

test("a replica with checkRules refuses with a DalvError naming the rule; without, it leaves the write to the server", () => {
  const op: Op = { kind: "put", key: "sys/orders/1", value: { scalar: b("1") } };
  const cfg = { ...defaultConfig(), rules };
  useRuleChecker(undefined);
  assert.doesNotThrow(() => checkRule(op, undefined, op.value, cfg));
  useRuleChecker(checkRules);
  try {
    assert.throws(
      () => checkRule(op, undefined, op.value, cfg),
      (e: unknown) => e instanceof DalvError && e.code === "rule" && e.serverCode === "permission_denied" && e.message.includes('rule "sys/**"'),
    );
  } finally {
    useRuleChecker(undefined);
  }
});
