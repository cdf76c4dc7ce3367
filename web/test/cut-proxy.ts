// A TCP proxy in front of the server that a test can cut: while cut,
// every connection through it is closed and new ones are refused, as when
// the server is unreachable. The browser's offline mode and request
// routing only emulate that, and a request can get past them while a page
// reloads; a closed port cannot be got past.
import { connect, createServer } from "node:net";
import type { AddressInfo, Server, Socket } from "node:net";

/** CutProxy forwards connections to a server until cut. */
export interface CutProxy {
  /** url is the proxy's base URL, to use in place of the server's. */
  url: string;
  /** cut closes every connection through the proxy and refuses new ones. */
  cut(): Promise<void>;
  /** restore accepts connections again, on the same port. */
  restore(): Promise<void>;
  /** close cuts the proxy for good. */
  close(): Promise<void>;
}

/** startCutProxy starts a proxy to target (an http://host:port URL) on a free loopback port. */
export async function startCutProxy(target: string): Promise<CutProxy> {
  const to = new URL(target);
  const sockets = new Set<Socket>();
  let server: Server | undefined;
  const listen = (port: number) =>
    new Promise<number>((res, rej) => {
      const s = createServer((down) => {
        const up = connect(Number(to.port), to.hostname);
        const end = () => {
          down.destroy();
          up.destroy();
          sockets.delete(down);
          sockets.delete(up);
        };
        sockets.add(down);
        sockets.add(up);
        down.on("error", end).on("close", end);
        up.on("error", end).on("close", end);
        down.pipe(up);
        up.pipe(down);
      });
      s.once("error", rej);
      s.listen(port, "127.0.0.1", () => {
        server = s;
        res((s.address() as AddressInfo).port);
      });
    });
  const cut = async () => {
    const s = server;
    server = undefined;
    if (!s) return;
    const closed = new Promise<void>((r) => s.close(() => r()));
    for (const c of sockets) c.destroy();
    sockets.clear();
    await closed;
  };
  const port = await listen(0);
  return {
    url: `http://127.0.0.1:${port}`,
    cut,
    restore: async () => {
      if (!server) await listen(port);
    },
    close: cut,
  };
}
