import assert from "node:assert/strict";
import { test } from "node:test";
import type { Conflict } from "./conflict.js";
import { use } from "./conflict.js";
import { mergeJSON, mergeJSONWith } from "./merge-json.js";
import type { Value } from "./value.js";

const j = (v: unknown): Value | undefined => (v === undefined ? undefined : { scalar: new TextEncoder().encode(JSON.stringify(v)) });
const conflict = (base: unknown, local: unknown, remote: unknown): Conflict => ({ key: "k", base: j(base), local: j(local), remote: j(remote), version: 3, at: 0 });
const out = (r: ReturnType<typeof mergeJSON>) => (r.deferred ? "defer" : r.value && "scalar" in r.value ? JSON.parse(new TextDecoder().decode(r.value.scalar)) : r.value);

test("mergeJSON merges fields changed on one side, defers fields changed on both", () => {
  const cases: { name: string; c: Conflict; want: unknown }[] = [
    { name: "disjoint fields", c: conflict({ a: 1, b: 1 }, { a: 2, b: 1 }, { a: 1, b: 3 }), want: { a: 2, b: 3 } },
    { name: "same change both sides", c: conflict({ a: 1 }, { a: 2 }, { a: 2 }), want: { a: 2 } },
    { name: "added fields", c: conflict({}, { x: 1 }, { y: 2 }), want: { x: 1, y: 2 } },
    { name: "removed on one side", c: conflict({ a: 1, b: 2 }, { a: 1 }, { a: 1, b: 2, c: 3 }), want: { a: 1, c: 3 } },
    { name: "nested objects", c: conflict({ o: { p: 1, q: 1 } }, { o: { p: 2, q: 1 } }, { o: { p: 1, q: 2 } }), want: { o: { p: 2, q: 2 } } },
    { name: "absent base is the empty object", c: conflict(undefined, { a: 1 }, { b: 2 }), want: { a: 1, b: 2 } },
    { name: "field changed on both sides", c: conflict({ a: 1 }, { a: 2 }, { a: 3 }), want: "defer" },
    { name: "not objects", c: conflict([1], [2], [3]), want: "defer" },
    { name: "deleted locally", c: conflict({ a: 1 }, undefined, { a: 2 }), want: "defer" },
    { name: "key order does not make a change", c: conflict({ o: { a: 1, b: 2 } }, { o: { b: 2, a: 1 } }, { o: { a: 1, b: 3 } }), want: { o: { a: 1, b: 3 } } },
  ];
  for (const c of cases) assert.deepEqual(out(mergeJSON(c.c)), c.want, c.name);
});

test("mergeJSONWith hands both-sides fields to the fallback with their path", () => {
  const seen: string[] = [];
  const r = mergeJSONWith((c) => {
    seen.push(c.field ?? "");
    return c.field === "gone" ? use(undefined) : use(c.remote);
  })(conflict({ a: { city: "x" }, gone: 1 }, { a: { city: "y" }, gone: 2 }, { a: { city: "z" }, gone: 3 }));
  assert.deepEqual(seen, ["a.city", "gone"]);
  assert.deepEqual(out(r), { a: { city: "z" } });
});
