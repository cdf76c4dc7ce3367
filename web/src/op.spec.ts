import assert from "node:assert/strict";
import { test } from "node:test";
import type { Op } from "./op.js";
import { applyOps } from "./op.js";
import type { Value } from "./value.js";

const b = (s: string) => new TextEncoder().encode(s);
const items = (v: Value | undefined) => (v && "list" in v ? v.list.map((x) => new TextDecoder().decode(x)) : v);

test("list ops follow the server's semantics", () => {
  const cases: { name: string; from: Value | undefined; ops: Op[]; want: unknown }[] = [
    { name: "add to absent starts a list", from: undefined, ops: [{ kind: "listAdd", key: "k", elem: b("a") }], want: ["a"] },
    { name: "add of a present element changes nothing", from: { list: [b("a"), b("b")] }, ops: [{ kind: "listAdd", key: "k", elem: b("a") }], want: ["a", "b"] },
    { name: "order of first addition", from: undefined, ops: [{ kind: "listAdd", key: "k", elem: b("b") }, { kind: "listAdd", key: "k", elem: b("a") }, { kind: "listAdd", key: "k", elem: b("b") }], want: ["b", "a"] },
    { name: "remove of an absent element changes nothing", from: { list: [b("a")] }, ops: [{ kind: "listRemove", key: "k", elem: b("z") }], want: ["a"] },
    { name: "remove then add puts it last", from: { list: [b("a"), b("b")] }, ops: [{ kind: "listRemove", key: "k", elem: b("a") }, { kind: "listAdd", key: "k", elem: b("a") }], want: ["b", "a"] },
    { name: "delete then add starts afresh", from: { list: [b("a")] }, ops: [{ kind: "delete", key: "k" }, { kind: "listAdd", key: "k", elem: b("c") }], want: ["c"] },
    { name: "remove on absent leaves an empty list", from: undefined, ops: [{ kind: "listRemove", key: "k", elem: b("a") }], want: [] },
  ];
  for (const c of cases) assert.deepEqual(items(applyOps(c.from, c.ops)), c.want, c.name);
});

test("put and delete replace the value", () => {
  assert.deepEqual(applyOps({ list: [b("a")] }, [{ kind: "put", key: "k", value: { scalar: b("x") } }]), { scalar: b("x") });
  assert.equal(applyOps({ scalar: b("x") }, [{ kind: "delete", key: "k" }]), undefined);
});
