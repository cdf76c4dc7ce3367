/**
 * A value a key holds: a scalar (opaque bytes; see the JSON helpers) or a
 * list, an ordered set of byte strings in order of first addition.
 */
export type Value = { readonly scalar: Uint8Array } | { readonly list: readonly Uint8Array[] };

/** scalar returns a scalar value holding bytes. */
export function scalar(bytes: Uint8Array): Value {
  return { scalar: bytes };
}

/** list returns a list value holding items, in order, without duplicates. */
export function list(...items: Uint8Array[]): Value {
  const out: Uint8Array[] = [];
  for (const it of items) {
    if (!out.some((o) => bytesEqual(o, it))) out.push(it);
  }
  return { list: out };
}

/** isList reports whether v is a list. */
export function isList(v: Value | undefined): v is { readonly list: readonly Uint8Array[] } {
  return v !== undefined && "list" in v;
}

/** bytesEqual reports whether two byte strings are equal. */
export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** valuesEqual reports whether two optional values are equal (undefined: absent). */
export function valuesEqual(a: Value | undefined, b: Value | undefined): boolean {
  if (a === undefined || b === undefined) return a === b;
  if (isList(a) !== isList(b)) return false;
  if (isList(a) && isList(b)) {
    if (a.list.length !== b.list.length) return false;
    return a.list.every((it, i) => bytesEqual(it, b.list[i] as Uint8Array));
  }
  return bytesEqual((a as { scalar: Uint8Array }).scalar, (b as { scalar: Uint8Array }).scalar);
}

/** valueSize is the bytes the server counts for a value: the scalar, or the sum of the items. */
export function valueSize(v: Value): number {
  return isList(v) ? v.list.reduce((n, it) => n + it.length, 0) : v.scalar.length;
}
