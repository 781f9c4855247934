// The local stack and headless Chromium, for the browser tests and the UI benchmark.

import { spawn } from "node:child_process";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const binary =
  process.env.LOCAL_STACK_BIN ??
  path.join(process.env.CARGO_TARGET_DIR ?? path.join(root, "target"), "debug", "local-stack");
export const DEMO = { email: "demo@example.com", password: "Demo-Password-2026!" };

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.on("error", reject);
  });
}

/// Starts local-stack with `args` (on `port`, else a free one) and resolves once it says it
/// is ready. `env` adds to (or, with `undefined`, removes from) this process's environment,
/// e.g. `{ BUDGET_TOKENS_PER_DAY: "600" }`.
export async function startStack(args = [], { port, env = {} } = {}) {
  port ??= await freePort();
  const environment = { ...process.env, ...env };
  for (const [name, value] of Object.entries(environment)) if (value === undefined) delete environment[name];
  const child = spawn(binary, ["--port", String(port), "--web-dir", path.join(root, "web"), ...args], {
    cwd: root,
    env: environment,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`local-stack did not start:\n${output}`)), 90_000);
    const read = (chunk) => {
      output += chunk;
      if (output.includes("Ready in")) {
        clearTimeout(timer);
        resolve();
      }
    };
    child.stdout.on("data", read);
    child.stderr.on("data", read);
    child.on("exit", (code) => reject(new Error(`local-stack exited with ${code}:\n${output}`)));
  });
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    log: () => output,
    stop: () =>
      new Promise((resolve) => {
        if (child.exitCode !== null) return resolve();
        child.removeAllListeners("exit");
        child.on("exit", resolve);
        child.kill("SIGINT");
      }),
  };
}

/// Signs `page` in through the UI's form, and waits for the signed-in page.
export async function signIn(page, { email, password } = DEMO) {
  const form = page.locator("#sign-in-form");
  await form.getByLabel("E-mail").fill(email);
  await form.getByLabel("Password").fill(password);
  await form.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "New job" }).waitFor({ timeout: 30_000 });
}

/// Debian's Chromium, headless, as quiet as it can be made.
export function launchChromium() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}
