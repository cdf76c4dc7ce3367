import { create } from "@bufbuild/protobuf";
import type { Change as WireChange, Op as WireOp, Value as WireValue } from "../gen/dalv/v1/dalv_pb.js";
import { OpKind, OpSchema, ValueSchema } from "../gen/dalv/v1/dalv_pb.js";
import type { Op } from "../op.js";
import type { Value } from "../value.js";
import { isList } from "../value.js";

/** toWireValue converts a value to its protobuf message. */
export function toWireValue(v: Value): WireValue {
  if (isList(v)) return create(ValueSchema, { kind: { case: "list", value: { items: [...v.list] } } });
  return create(ValueSchema, { kind: { case: "scalar", value: v.scalar } });
}

/**
 * fromWireValue converts a protobuf value; an unset one is absent. The bytes
 * are copied: decoded bytes are views into the whole answer's buffer, which
 * IndexedDB would otherwise store whole with every value.
 */
export function fromWireValue(v: WireValue | undefined): Value | undefined {
  switch (v?.kind.case) {
    case "scalar":
      return { scalar: v.kind.value.slice() };
    case "list":
      return { list: v.kind.value.items.map((it) => it.slice()) };
    default:
      return undefined;
  }
}

/** toWireOp converts an op to its protobuf message. */
export function toWireOp(op: Op): WireOp {
  switch (op.kind) {
    case "put":
      return create(OpSchema, { kind: OpKind.PUT, key: op.key, value: toWireValue(op.value) });
    case "delete":
      return create(OpSchema, { kind: OpKind.DELETE, key: op.key });
    case "listAdd":
      return create(OpSchema, { kind: OpKind.LIST_ADD, key: op.key, value: { kind: { case: "scalar", value: op.elem } } });
    case "listRemove":
      return create(OpSchema, { kind: OpKind.LIST_REMOVE, key: op.key, value: { kind: { case: "scalar", value: op.elem } } });
  }
}

/** fromWireChange converts a change to the device's form: the value, or undefined where deleted. */
export function fromWireChange(c: WireChange): { value: Value | undefined; version: number } {
  return { value: c.deleted ? undefined : fromWireValue(c.value), version: Number(c.version) };
}
