import type { DalvErrorCode } from "../errors.js";
import type { Touched } from "./records.js";

/** Message is what tabs of one replica tell each other over BroadcastChannel. */
export type Message =
  /** A transaction committed: read what it touched again. */
  | { t: "patch"; touched: Touched }
  /** The leader's sync state. */
  | { t: "status"; online: boolean; watching: boolean; lastSync: number; error: { code: DalvErrorCode; message: string; serverCode: string | undefined } | undefined }
  /** A tab asks the leader to sync now (and to say its status). */
  | { t: "kick" };

/**
 * Tabs is one tab's link to the others of the same replica: a channel to
 * tell them what changed, and the leader lock, held for the tab's life (or
 * until stop), that makes exactly one tab run the sync loop. The browser
 * releases the lock when the tab closes or crashes, and the next tab
 * waiting for it takes over.
 */
export class Tabs {
  private readonly channel: BroadcastChannel | undefined;
  private release: (() => void) | undefined;
  private waiting: AbortController | undefined;
  leader = false;

  constructor(
    private readonly name: string,
    onMessage: (m: Message) => void,
  ) {
    if (typeof BroadcastChannel !== "undefined") {
      this.channel = new BroadcastChannel(`dalv:${name}`);
      this.channel.onmessage = (ev: MessageEvent<Message>) => onMessage(ev.data);
    }
  }

  post(m: Message): void {
    this.channel?.postMessage(m);
  }

  /** lead waits for the leader lock and calls onLead once this tab holds it; without Web Locks (Node) it leads at once. */
  lead(onLead: () => void): void {
    if (this.leader || this.waiting) return;
    const locks = typeof navigator !== "undefined" ? navigator.locks : undefined;
    if (!locks) {
      this.leader = true;
      this.release = () => undefined;
      onLead();
      return;
    }
    const ac = new AbortController();
    this.waiting = ac;
    locks
      .request(`dalv-leader:${this.name}`, { signal: ac.signal }, () => {
        this.waiting = undefined;
        this.leader = true;
        onLead();
        return new Promise<void>((resolve) => {
          this.release = resolve;
        });
      })
      .catch(() => undefined); // aborted while waiting
  }

  /**
   * ifFree runs fn holding the leader lock when no tab holds it (a tab that
   * does not sync in the background may still sync once), and reports
   * whether it ran.
   */
  async ifFree(fn: () => Promise<void>): Promise<boolean> {
    const locks = typeof navigator !== "undefined" ? navigator.locks : undefined;
    if (!locks) {
      await fn();
      return true;
    }
    return locks.request(`dalv-leader:${this.name}`, { ifAvailable: true }, async (lock) => {
      if (!lock) return false;
      await fn();
      return true;
    });
  }

  /** resign gives the lock up (or stops waiting for it). */
  resign(): void {
    this.waiting?.abort();
    this.waiting = undefined;
    this.leader = false;
    this.release?.();
    this.release = undefined;
  }

  close(): void {
    this.resign();
    this.channel?.close();
  }
}
