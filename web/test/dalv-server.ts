// A real `dalv serve` for the tests: started from the binary in DALV_BIN
// (or built from the repository), on a free loopback port, with test secrets.
import { spawn, execFileSync } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";

export const jwtSecret = "web-test-secret-0123456789abcdef0123456789";
export const backendKey = "web-test-backend-key-0123456789";

const repo = resolve(import.meta.dirname, "../../..");

/** dalvBinary returns the dalv binary to test against, building it once when DALV_BIN is unset. */
export function dalvBinary(): string {
  const env = process.env.DALV_BIN;
  if (env) return env;
  const out = join(tmpdir(), "dalv-web-test-bin");
  if (!existsSync(out)) execFileSync("go", ["build", "-o", out, "./cmd/dalv"], { cwd: repo, stdio: "inherit" });
  return out;
}

export interface DalvServer {
  url: string;
  proc: ChildProcess;
  token(user: string): string;
  commit(user: string, ops: unknown[]): Promise<number>;
  commitShared(name: string, ops: unknown[]): Promise<number>;
  get(user: string, key: string): Promise<{ value?: { scalar?: string; list?: { items?: string[] } }; version: string } | undefined>;
  metric(name: string): Promise<number>;
  stop(): Promise<void>;
}

/** startServer starts `dalv serve` and returns once it listens. */
export async function startServer(args: string[] = []): Promise<DalvServer> {
  const data = mkdtempSync(join(tmpdir(), "dalv-web-data-"));
  const proc = spawn(dalvBinary(), ["serve", "--addr", "127.0.0.1:0", "--data", data, "--log-level", "warn", ...args], {
    env: { ...process.env, DALV_JWT_SECRET: jwtSecret, DALV_BACKEND_KEYS: backendKey },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  proc.stderr?.on("data", (b: Buffer) => (stderr += b.toString()));
  const url = await new Promise<string>((res, rej) => {
    const rl = createInterface({ input: proc.stdout! });
    rl.on("line", (line) => {
      const m = /DalvDB listening on (http:\/\/\S+)/.exec(line);
      if (m?.[1]) res(m[1]);
    });
    proc.on("exit", (code) => rej(new Error(`dalv serve exited (${code}): ${stderr}`)));
    setTimeout(() => rej(new Error(`dalv serve did not listen within 30s: ${stderr}`)), 30_000).unref();
  });
  const backend = async (method: string, body: unknown) => {
    const r = await fetch(`${url}/dalv.v1.BackendService/${method}`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${backendKey}` },
      body: JSON.stringify(body),
    });
    const j = (await r.json()) as Record<string, unknown>;
    if (!r.ok) throw new Error(`${method}: ${r.status} ${JSON.stringify(j)}`);
    return j;
  };
  return {
    url,
    proc,
    token: (user) => mintToken(user),
    commit: async (user, ops) => Number((await backend("Commit", { user, ops })).version ?? 0),
    commitShared: async (shared, ops) => Number((await backend("Commit", { shared, ops })).version ?? 0),
    get: async (user, key) => {
      const j = (await backend("Get", { user, keys: [key] })) as { items?: { value?: never }[]; version: string };
      const it = j.items?.[0];
      return it ? { value: it.value, version: j.version } : undefined;
    },
    metric: async (name) => {
      const text = await (await fetch(`${url}/metrics`)).text();
      const m = new RegExp(`^${name} (\\S+)$`, "m").exec(text);
      return m?.[1] ? Number(m[1]) : 0;
    },
    stop: async () => {
      if (proc.exitCode === null) {
        const exited = new Promise((r) => proc.once("exit", r));
        proc.kill("SIGTERM");
        await exited;
      }
      rmSync(data, { recursive: true, force: true });
    },
  };
}

/** mintToken signs an HS256 device token for user, valid for an hour. */
export function mintToken(user: string): string {
  const b64 = (s: string | Buffer) => Buffer.from(s).toString("base64url");
  const head = b64(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64(JSON.stringify({ sub: user, exp: Math.floor(Date.now() / 1000) + 3600 }));
  const sig = createHmac("sha256", jwtSecret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

/** newUser returns a fresh user id. */
export function newUser(): string {
  return `u-${randomBytes(6).toString("hex")}`;
}

/** b64 encodes a string as base64, as Connect's JSON carries bytes. */
export function b64(s: string): string {
  return Buffer.from(s).toString("base64");
}

/** waitFor polls cond until it holds or the deadline passes. */
export async function waitFor(what: string, cond: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    if (await cond()) return;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
