// A static file server for the browser tests and the benchmark: the built
// bundle (dist/) and the test pages, on a free loopback port.
import { readFile } from "node:fs/promises";
import { createServer } from "node:http";
import type { Server } from "node:http";
import { extname, join, normalize } from "node:path";

const types: Record<string, string> = { ".html": "text/html; charset=utf-8", ".js": "text/javascript", ".map": "application/json", ".css": "text/css" };

/** serveStatic serves the files of roots (first match wins) and returns the server and its origin. */
export async function serveStatic(roots: string[]): Promise<{ server: Server; origin: string }> {
  const server = createServer(async (req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url ?? "/", "http://x").pathname)).replace(/^(\.\.[/\\])+/, "");
    for (const root of roots) {
      try {
        const body = await readFile(join(root, path));
        res.writeHead(200, { "Content-Type": types[extname(path)] ?? "application/octet-stream", "Cache-Control": "no-store" });
        res.end(body);
        return;
      } catch {
        // try the next root
      }
    }
    res.writeHead(404);
    res.end("not found");
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const addr = server.address();
  if (!addr || typeof addr === "string") throw new Error("no address");
  return { server, origin: `http://127.0.0.1:${addr.port}` };
}
