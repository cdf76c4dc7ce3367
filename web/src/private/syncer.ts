import type { Client, Interceptor } from "@connectrpc/connect";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import type { Resolver } from "../conflict.js";
import { deferToInbox } from "../conflict.js";
import { DalvError } from "../errors.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { SyncResponse } from "../gen/dalv/v1/dalv_pb.js";
import type { SyncRequestSchema } from "../gen/dalv/v1/dalv_pb.js";
import { ClientService, SyncStatus as WireStatus } from "../gen/dalv/v1/dalv_pb.js";
import type { RefusedBatch } from "../refused-batch.js";
import type { ServerConfig } from "./config.js";
import { checkOps, defaultConfig } from "./config.js";
import type { Core, Update } from "./core.js";
import type { Batch } from "./records.js";
import { fromWireChange, toWireOp } from "./wire.js";

/** SyncerOptions are the replica's options the sync loop reads, with their defaults filled in. */
export interface SyncerOptions {
  serverUrl: string;
  token: () => Promise<string> | string;
  resolver?: Resolver | undefined;
  shared: string[];
  retryMinMs: number;
  retryMaxMs: number;
  resyncEveryMs: number;
  maxConflictRounds: number;
  maxLimitRetries: number;
  onRefused?: ((b: RefusedBatch) => void) | undefined;
}

/** LoopStatus is the part of the status the tab that syncs knows. */
export interface LoopStatus {
  online: boolean;
  watching: boolean;
  lastSync: number;
  lastError: DalvError | undefined;
}

/**
 * Syncer exchanges with the server for the replica: the sync loop and the
 * watches run only in the leader tab; Syncer.sync works in any tab.
 */
export class Syncer {
  private readonly client: Client<typeof ClientService>;
  private tok: string | undefined;
  private configured = false;
  private lock: Promise<unknown> = Promise.resolve();
  private limitHits = 0;
  private resynced = false;
  private kicked = false;
  private wake: (() => void) | undefined;
  private loop: AbortController | undefined;
  private watches = new Map<string, AbortController>();
  private watchFailures = 0;
  readonly status: LoopStatus = { online: false, watching: false, lastSync: 0, lastError: undefined };

  constructor(
    private readonly core: Core,
    private readonly opts: SyncerOptions,
    private readonly onStatus: (s: LoopStatus) => void,
  ) {
    const auth: Interceptor = (next) => async (req) => {
      if (this.tok !== undefined) req.header.set("Authorization", `Bearer ${this.tok}`);
      return next(req);
    };
    const transport = createConnectTransport({ baseUrl: opts.serverUrl.replace(/\/+$/, ""), useBinaryFormat: true, interceptors: [auth] });
    this.client = createClient(ClientService, transport);
  }

  /** running reports whether the loop runs. */
  get running(): boolean {
    return this.loop !== undefined;
  }

  /** start runs the sync loop until stop. */
  start(): void {
    if (this.loop) return;
    const ac = new AbortController();
    this.loop = ac;
    void this.run(ac.signal);
  }

  /** stop ends the loop and the watches; pending writes stay pending. */
  stop(): void {
    this.loop?.abort();
    this.loop = undefined;
    for (const w of this.watches.values()) w.abort();
    this.watches.clear();
    this.wake?.();
    this.set({ watching: false });
  }

  /** kick makes the loop sync soon: after a local write, or when the browser is back online. */
  kick(): void {
    this.kicked = true;
    this.wake?.();
  }

  private set(s: Partial<LoopStatus>): void {
    Object.assign(this.status, s);
    this.onStatus({ ...this.status });
  }

  private async run(signal: AbortSignal): Promise<void> {
    let backoff = this.opts.retryMinMs;
    while (!signal.aborted) {
      this.kicked = false;
      let wait: number;
      try {
        await this.sync();
        backoff = this.opts.retryMinMs;
        this.startWatches(signal);
        wait = this.opts.resyncEveryMs;
      } catch (e) {
        if (signal.aborted) return;
        const err = toDalvError(e);
        this.set({ online: err.code !== "unavailable" && this.status.online, lastError: err });
        if (err.code === "unavailable") this.set({ online: false });
        wait = backoff * (0.5 + Math.random() / 2);
        backoff = Math.min(backoff * 2, this.opts.retryMaxMs);
      }
      if (this.kicked || signal.aborted) continue;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, wait);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wake = undefined;
    }
  }

  /** serial runs fn after every exchange before it, so answers and watch events never interleave. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.lock.then(fn, fn);
    this.lock = p.catch(() => undefined);
    return p;
  }

  /**
   * sync exchanges with the server once: the pending batches in order
   * (resolving conflicts on the way), then pulls until caught up.
   */
  sync(): Promise<void> {
    return this.serial(async () => {
      try {
        await this.ensureConfig();
        const caughtUp = await this.push();
        if (!caughtUp) await this.pull("");
        const cfg = this.core.state.config;
        for (const s of this.opts.shared) {
          if (!cfg.readable.includes(s)) {
            throw new DalvError("server", `shared partition ${JSON.stringify(s)}: the server does not let this token read it`, { serverCode: "permission_denied" });
          }
          await this.pull(s);
        }
        this.set({ online: true, lastSync: Date.now(), lastError: undefined });
      } catch (e) {
        const err = toDalvError(e);
        if (err.code === "unavailable") this.set({ online: false, lastError: err });
        else this.set({ lastError: err });
        throw err;
      }
    });
  }

  /** withToken calls fn, asking the token provider again and retrying once when the server answers unauthenticated. */
  private async withToken<T>(fn: () => Promise<T>): Promise<T> {
    if (this.tok === undefined) this.tok = await this.opts.token();
    try {
      return await fn();
    } catch (e) {
      if (ConnectError.from(e).code !== Code.Unauthenticated) throw e;
      this.tok = await this.opts.token();
      return await fn();
    }
  }

  private async ensureConfig(): Promise<void> {
    if (this.configured) return;
    const m = await this.withToken(() => this.client.getConfig({}));
    const cfg: ServerConfig = {
      ...defaultConfig(),
      systemPrefixes: [...m.systemPrefixes],
      readable: [...m.sharedPartitions],
      user: m.user,
      rules: m.rules,
    };
    // A limit the server leaves at 0 keeps its default.
    for (const k of ["maxKeyBytes", "maxValueBytes", "maxOps", "maxRequestBytes", "maxResponseBytes"] as const) if (m[k] > 0) cfg[k] = m[k];
    const had = this.core.state.config;
    if (had.user !== "" && cfg.user !== "" && had.user !== cfg.user) {
      throw new DalvError("wrong_user", `the token is for user ${JSON.stringify(cfg.user)}, but this replica holds the data of ${JSON.stringify(had.user)}`);
    }
    if (JSON.stringify(had) !== JSON.stringify(cfg)) await this.core.saveConfig(cfg);
    this.configured = true;
  }

  private rpcSync(init: Omit<MessageInitShape<typeof SyncRequestSchema>, "$typeName">): Promise<SyncResponse> {
    return this.withToken(() => this.client.sync({ ...init, deviceId: this.core.state.deviceId }));
  }

  /** push sends the pending batches, head first, until none is left; true when the last answer brought the partition to the server's head. */
  private async push(): Promise<boolean> {
    let rounds = 0;
    let caughtUp = false;
    for (;;) {
      const b = await this.core.head();
      if (!b) return caughtUp;
      const base = await this.core.sentBase(b);
      let resp: SyncResponse;
      try {
        resp = await this.rpcSync({ baseVersion: BigInt(base), batch: BigInt(b.seq), ops: b.ops.map(toWireOp) });
      } catch (e) {
        if (await this.refused(b, e)) continue;
        throw e;
      }
      this.limitHits = 0;
      const u = await this.collect("", base, resp);
      if (resp.status === WireStatus.ACCEPTED) {
        await this.core.applyRemote(u, b);
        rounds = 0;
        caughtUp = true;
      } else if (resp.status === WireStatus.CONFLICT) {
        await this.core.applyRemote(u);
        caughtUp = true;
        if (++rounds > this.opts.maxConflictRounds) {
          throw new DalvError("conflict_rounds", `batch ${b.seq}, keys ${JSON.stringify(resp.conflicts)}: conflicts not settled within ${this.opts.maxConflictRounds} rounds; the batch stays pending`);
        }
        const tr = await this.core.triage(b, base, resp.conflicts, u.version);
        const resolver = this.opts.resolver ?? (() => deferToInbox());
        const decisions = tr.calls.map((c) => ({ c, res: resolver(c) }));
        await this.core.rewrite(b, tr.maxSeq, decisions, tr.cleans, tr.lifts, u.version, this.core.state.config);
      } else {
        throw new DalvError("server", `sync batch ${b.seq}: unexpected status ${resp.status}`);
      }
    }
  }

  /**
   * refused handles an error answer to the head batch b: a refusal that
   * resending cannot change sets the batch aside (true); anything else is
   * retried later (false).
   */
  private async refused(b: Batch, e: unknown): Promise<boolean> {
    const ce = ConnectError.from(e);
    switch (ce.code) {
      case Code.PermissionDenied:
      case Code.FailedPrecondition:
        break;
      case Code.InvalidArgument:
        // The server may have lost data and be behind the device's base
        // version; then the device resyncs and sends the batch again.
        await this.pull("");
        if (this.resynced) {
          this.resynced = false;
          return true;
        }
        break;
      case Code.ResourceExhausted: {
        // The rate limit answers resource_exhausted too: set the batch
        // aside only when it breaks the limits in force, or keeps being
        // refused.
        this.configured = false;
        await this.ensureConfig();
        this.limitHits++;
        let fits = true;
        try {
          checkOps(b.ops, this.core.state.config);
        } catch {
          fits = false;
        }
        if (fits && this.limitHits <= this.opts.maxLimitRetries) return false;
        break;
      }
      default:
        return false;
    }
    this.limitHits = 0;
    this.configured = false; // the domains, limits or write rules may have changed: fetch them again
    const rb: RefusedBatch = { id: b.seq, ops: b.ops, code: codeName(ce.code), message: ce.rawMessage, at: Date.now() };
    await this.core.setAside(b, rb);
    this.set({ lastError: new DalvError("server", `batch refused by the server (${rb.code}): ${rb.message}`, { serverCode: rb.code, cause: e }) });
    this.opts.onRefused?.(rb);
    return true;
  }

  /** collect gathers an answer and, when it was cut at the response limit, the pages after it. */
  private async collect(part: string, base: number, first: SyncResponse): Promise<Update> {
    let resp = first;
    const u: Update = { part, version: 0, reset: base === 0 || resp.reset, changes: new Map() };
    const add = (r: SyncResponse) => {
      for (const c of r.changes) u.changes.set(c.key, fromWireChange(c));
    };
    add(resp);
    let horizon = 0n;
    while (resp.more) {
      if (resp.reset) horizon = resp.horizon;
      resp = await this.rpcSync({ baseVersion: resp.version, shared: part, resetHorizon: horizon });
      if (resp.reset && resp.horizon !== horizon) {
        u.reset = true; // the horizon moved: the server started the reset again
        u.changes.clear();
      }
      add(resp);
    }
    u.version = Number(resp.version);
    return u;
  }

  /** pull brings part up to the server's head; a server behind the device's version is taken as the truth. */
  private async pull(part: string): Promise<void> {
    let base = this.core.state.versions.get(part) ?? 0;
    let resp: SyncResponse;
    try {
      resp = await this.rpcSync({ baseVersion: BigInt(base), shared: part });
    } catch (e) {
      if (base === 0 || ConnectError.from(e).code !== Code.InvalidArgument) throw e;
      base = 0;
      this.resynced = true;
      resp = await this.rpcSync({ shared: part });
    }
    await this.core.applyRemote(await this.collect(part, base, resp));
  }

  private startWatches(signal: AbortSignal): void {
    const parts = ["", ...this.opts.shared.filter((s) => this.core.state.config.readable.includes(s))];
    for (const p of parts) {
      if (this.watches.has(p)) continue;
      const ac = new AbortController();
      this.watches.set(p, ac);
      signal.addEventListener("abort", () => ac.abort(), { once: true });
      void this.watch(p, ac.signal).then(
        () => undefined,
        (e: unknown) => {
          if (ac.signal.aborted) return;
          this.watches.delete(p);
          if (p === "") this.set({ watching: false });
          const err = toDalvError(e);
          if (ConnectError.from(e).code === Code.Unauthenticated) this.tok = undefined;
          this.set({ lastError: err, ...(err.code === "unavailable" ? { online: false } : {}) });
          // The loop syncs again and reopens the watch; repeated failures back off.
          this.watchFailures++;
          const delay = Math.min(this.opts.retryMinMs * 2 ** Math.min(this.watchFailures, 10), this.opts.retryMaxMs);
          setTimeout(() => this.kick(), this.watchFailures > 1 ? delay : 0);
        },
      );
    }
  }

  /** watch follows part live: the catch-up first (events with more set are gathered and applied at once), then each commit. */
  private async watch(part: string, signal: AbortSignal): Promise<void> {
    if (this.tok === undefined) this.tok = await this.opts.token();
    const from = this.core.state.versions.get(part) ?? 0;
    const stream = this.client.watch({ deviceId: this.core.state.deviceId, fromVersion: BigInt(from), shared: part }, { signal });
    let acc: Update | undefined;
    for await (const ev of stream) {
      if (!this.status.online) this.set({ online: true });
      if (ev.heartbeat) {
        if (!acc) {
          this.watchFailures = 0;
          if (part === "" && !this.status.watching) this.set({ watching: true });
        }
        continue;
      }
      if (ev.reset) throw new DalvError("server", "watch: the server asked for a resync");
      acc ??= { part, version: 0, reset: false, changes: new Map() };
      for (const c of ev.changes) acc.changes.set(c.key, fromWireChange(c));
      acc.version = Number(ev.version);
      if (!ev.more) {
        const u = acc;
        acc = undefined;
        await this.serial(async () => {
          if (signal.aborted) return;
          if (u.version <= (this.core.state.versions.get(part) ?? 0)) return;
          await this.core.applyRemote(u);
        });
      }
    }
    throw new DalvError("unavailable", "watch: the server ended the stream");
  }
}

/** toDalvError turns any failure of an exchange into a DalvError. */
export function toDalvError(e: unknown): DalvError {
  if (e instanceof DalvError) return e;
  const ce = ConnectError.from(e);
  const serverCode = codeName(ce.code);
  if ([Code.Unavailable, Code.Unknown, Code.DeadlineExceeded, Code.Canceled, Code.Aborted].includes(ce.code)) {
    return new DalvError("unavailable", `the server could not be reached: ${ce.rawMessage}`, { cause: e, serverCode });
  }
  return new DalvError("server", `the server refused (${serverCode}): ${ce.rawMessage}`, { cause: e, serverCode });
}

/** codeName is a Connect code's wire name, as in "permission_denied". */
export function codeName(c: Code): string {
  return Code[c].replace(/[A-Z]/g, (m, i: number) => (i === 0 ? "" : "_") + m.toLowerCase());
}
