import type { Change } from "../change.js";
import type { Conflict } from "../conflict.js";
import type { RefusedBatch } from "../refused-batch.js";
import type { Value } from "../value.js";
import { valuesEqual } from "../value.js";
import type { ServerConfig } from "./config.js";
import { defaultConfig } from "./config.js";
import type { Entry, PKey } from "./records.js";

/** Patch is a committed transaction's effect on the in-memory state. */
export interface Patch {
  /** Synced keys set (an Entry) or removed (null). */
  kv: { p: string; k: string; e: Entry | null }[];
  /** Partitions replaced whole (a reset), with all their entries. */
  parts: Map<string, Map<string, Entry>>;
  pkeys: [string, PKey | null][];
  versions: [string, number][];
  inbox: [string, Conflict | null][];
  refused: [number, RefusedBatch | null][];
  pendingCount?: number;
  config?: ServerConfig;
  remote: boolean;
}

export function emptyPatch(remote: boolean): Patch {
  return { kv: [], parts: new Map(), pkeys: [], versions: [], inbox: [], refused: [], remote };
}

/** State is the replica held in memory: reads are served from it, synchronously. */
export class State {
  synced = new Map<string, Map<string, Entry>>();
  pend = new Map<string, PKey>();
  versions = new Map<string, number>();
  inbox = new Map<string, Conflict>();
  refused = new Map<number, RefusedBatch>();
  pendingCount = 0;
  config: ServerConfig = defaultConfig();
  deviceId = "";

  /** part returns the synced keys of a partition. */
  part(p: string): Map<string, Entry> {
    let m = this.synced.get(p);
    if (!m) {
      m = new Map();
      this.synced.set(p, m);
    }
    return m;
  }

  /** view is what a read shows for key: the synced value with the pending ops applied. */
  view(p: string, key: string): Value | undefined {
    if (p === "") {
      const pk = this.pend.get(key);
      if (pk) return pk.local;
    }
    return this.synced.get(p)?.get(key)?.v;
  }

  /** keys lists the keys a read of partition p shows under prefix, sorted. */
  keys(p: string, prefix: string): string[] {
    const out = new Set<string>();
    for (const k of this.synced.get(p)?.keys() ?? []) if (k.startsWith(prefix)) out.add(k);
    if (p === "") for (const [k, pk] of this.pend) if (k.startsWith(prefix) && pk.local !== undefined) out.add(k);
    return [...out].filter((k) => this.view(p, k) !== undefined).sort(compareKeys);
  }

  /** apply makes patch current and returns the changes readers see, in order. */
  apply(patch: Patch): Change[] {
    const touched: [string, string][] = [];
    const seen = new Set<string>();
    const touch = (p: string, k: string) => {
      const id = `${p}\u0000${k}`;
      if (!seen.has(id)) {
        seen.add(id);
        touched.push([p, k]);
      }
    };
    for (const [p, m] of patch.parts) {
      for (const k of this.synced.get(p)?.keys() ?? []) touch(p, k);
      for (const k of m.keys()) touch(p, k);
    }
    for (const c of patch.kv) touch(c.p, c.k);
    for (const [k] of patch.pkeys) touch("", k);
    const before = touched.map(([p, k]) => this.view(p, k));

    for (const [p, m] of patch.parts) this.synced.set(p, m);
    for (const c of patch.kv) {
      if (c.e) this.part(c.p).set(c.k, c.e);
      else this.synced.get(c.p)?.delete(c.k);
    }
    for (const [k, pk] of patch.pkeys) {
      if (pk) this.pend.set(k, pk);
      else this.pend.delete(k);
    }
    for (const [p, v] of patch.versions) this.versions.set(p, v);
    for (const [k, c] of patch.inbox) {
      if (c) this.inbox.set(k, c);
      else this.inbox.delete(k);
    }
    for (const [id, b] of patch.refused) {
      if (b) this.refused.set(id, b);
      else this.refused.delete(id);
    }
    if (patch.pendingCount !== undefined) this.pendingCount = patch.pendingCount;
    if (patch.config) this.config = patch.config;

    const out: Change[] = [];
    touched.forEach(([p, k], i) => {
      const after = this.view(p, k);
      if (!valuesEqual(before[i], after)) out.push({ partition: p, key: k, value: after, remote: patch.remote });
    });
    return out;
  }
}

/** compareKeys orders keys as the server does: by their UTF-8 bytes. */
export function compareKeys(a: string, b: string): number {
  // UTF-16 order differs from UTF-8 byte order only for surrogate pairs
  // against U+E000..U+FFFF; compare code points to match the server.
  if (a === b) return 0;
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.codePointAt(i) ?? 0;
    const y = b.codePointAt(i) ?? 0;
    if (x !== y) return x < y ? -1 : 1;
    if (x > 0xffff) i++;
  }
  return a.length < b.length ? -1 : 1;
}
