import type { Value } from "./value.js";
import { bytesEqual, isList } from "./value.js";

/** Op is one change to one key, as the device queues it for the server. */
export type Op =
  | { readonly kind: "put"; readonly key: string; readonly value: Value }
  | { readonly kind: "delete"; readonly key: string }
  | { readonly kind: "listAdd"; readonly key: string; readonly elem: Uint8Array }
  | { readonly kind: "listRemove"; readonly key: string; readonly elem: Uint8Array };

/**
 * applyOps returns what a key holds after ops, from v (undefined: absent),
 * with the server's semantics: LIST_ADD of a present element and
 * LIST_REMOVE of an absent one change nothing, list ops on an absent key
 * start an empty list. A list op on a scalar leaves the scalar (the local
 * checks refuse such writes before they are queued).
 */
export function applyOps(v: Value | undefined, ops: readonly Op[]): Value | undefined {
  let cur = v;
  for (const op of ops) {
    switch (op.kind) {
      case "put":
        cur = op.value;
        break;
      case "delete":
        cur = undefined;
        break;
      case "listAdd": {
        if (cur !== undefined && !isList(cur)) break;
        const items = cur?.list ?? [];
        if (!items.some((it) => bytesEqual(it, op.elem))) cur = { list: [...items, op.elem] };
        else cur = { list: items };
        break;
      }
      case "listRemove": {
        if (cur !== undefined && !isList(cur)) break;
        const items = cur?.list ?? [];
        cur = { list: items.filter((it) => !bytesEqual(it, op.elem)) };
        break;
      }
    }
  }
  return cur;
}

/** isScalarOp reports whether op replaces the whole key (PUT or DELETE). */
export function isScalarOp(op: Op): boolean {
  return op.kind === "put" || op.kind === "delete";
}
