import type { Conflict, Resolution, Resolver } from "./conflict.js";
import { deferToInbox, use } from "./conflict.js";
import type { Value } from "./value.js";
import { isList } from "./value.js";

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
type Obj = { [k: string]: Json };

const enc = new TextEncoder();
const dec = new TextDecoder();

/**
 * mergeJSON is a Resolver for keys holding JSON objects: a three-way merge,
 * field by field (recursing into fields that are objects on every side).
 * A field changed on one side only takes that side's value; a field changed
 * on both sides to different values defers the whole key to the inbox.
 * Keys that are not JSON objects on all three sides, or deleted on one side,
 * are deferred too; mergeJSONWith decides those instead.
 */
export const mergeJSON: Resolver = (c) => merge(c, undefined);

/**
 * mergeJSONWith returns a Resolver that merges like mergeJSON and hands each
 * field changed on both sides to fallback, with field set to its path and
 * base, local and remote holding that field's JSON (undefined where absent);
 * use(undefined) removes the field, deferToInbox defers the whole key. A key
 * that cannot be merged field by field goes to fallback whole.
 */
export function mergeJSONWith(fallback: Resolver): Resolver {
  return (c) => merge(c, fallback);
}

function merge(c: Conflict, fallback: Resolver | undefined): Resolution {
  const whole = () => (fallback ? fallback(c) : deferToInbox());
  if (c.local === undefined || c.remote === undefined) return whole();
  const base = jsonObject(c.base);
  const local = jsonObject(c.local);
  const remote = jsonObject(c.remote);
  if (!base || !local || !remote) return whole();
  const out = mergeObjects(c, fallback, "", base, local, remote);
  if (!out) return deferToInbox();
  return use({ scalar: enc.encode(JSON.stringify(out)) });
}

function jsonObject(v: Value | undefined): Obj | undefined {
  if (v === undefined) return {};
  if (isList(v)) return undefined;
  return parseObject(dec.decode(v.scalar));
}

function parseObject(text: string): Obj | undefined {
  try {
    const j = JSON.parse(text) as Json;
    return isObject(j) ? j : undefined;
  } catch {
    return undefined;
  }
}

function isObject(j: Json | undefined): j is Obj {
  return typeof j === "object" && j !== null && !Array.isArray(j);
}

/** canonical encodes j with sorted object keys, so equal JSON compares equal. */
function canonical(j: Json | undefined): string | undefined {
  if (j === undefined) return undefined;
  return JSON.stringify(j, (_k, v: Json) =>
    isObject(v) ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, v[k]])) : v,
  );
}

function same(a: Json | undefined, b: Json | undefined): boolean {
  return canonical(a) === canonical(b);
}

function mergeObjects(c: Conflict, fallback: Resolver | undefined, path: string, base: Obj, local: Obj, remote: Obj): Obj | undefined {
  const fields = [...new Set([...Object.keys(base), ...Object.keys(local), ...Object.keys(remote)])].sort();
  const out: Obj = {};
  for (const f of fields) {
    const b = Object.hasOwn(base, f) ? base[f] : undefined;
    const l = Object.hasOwn(local, f) ? local[f] : undefined;
    const r = Object.hasOwn(remote, f) ? remote[f] : undefined;
    const fpath = path === "" ? f : `${path}.${f}`;
    let v: Json | undefined;
    if (same(l, b)) v = r;
    else if (same(r, b) || same(l, r)) v = l;
    else if (isObject(l) && isObject(r) && (b === undefined || isObject(b))) {
      const sub = mergeObjects(c, fallback, fpath, b ?? {}, l, r);
      if (!sub) return undefined;
      v = sub;
    } else {
      if (!fallback) return undefined;
      const res = fallback({ key: c.key, field: fpath, base: raw(b), local: raw(l), remote: raw(r), version: c.version, at: 0 });
      if (res.deferred) return undefined;
      if (res.value === undefined) continue;
      if (isList(res.value)) return undefined;
      try {
        v = JSON.parse(dec.decode(res.value.scalar)) as Json;
      } catch {
        return undefined;
      }
    }
    if (v !== undefined) out[f] = v;
  }
  return out;
}

function raw(j: Json | undefined): Value | undefined {
  return j === undefined ? undefined : { scalar: enc.encode(JSON.stringify(j)) };
}
