// Chromium for the browser tests and the benchmark: Debian's package at
// /usr/bin/chromium, one fresh profile directory per device.
import { existsSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { BrowserContext } from "playwright-core";
import { chromium } from "playwright-core";

export const chromiumPath = process.env.DALV_CHROMIUM ?? "/usr/bin/chromium";

const flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"];

/** newProfile returns a fresh profile directory. */
export function newProfile(): string {
  return mkdtempSync(join(tmpdir(), "dalv-web-profile-"));
}

/** launch starts Chromium on the profile directory dir. */
export function launch(dir: string): Promise<BrowserContext> {
  if (!existsSync(chromiumPath)) throw new Error(`Chromium not found at ${chromiumPath}: install it with "apt-get install -y chromium"`);
  return chromium.launchPersistentContext(dir, { executablePath: chromiumPath, headless: true, args: flags });
}
