// The web UI in a real headless Chromium, against the real local stack (local-stack binary:
// moto, the offline model, the worker and the gateway), as a new user would use it.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const binary =
  process.env.LOCAL_STACK_BIN ??
  path.join(process.env.CARGO_TARGET_DIR ?? path.join(root, "target"), "debug", "local-stack");
const screenshots = path.join(root, "tests/e2e/screenshots");
const DEMO = { email: "demo@example.com", password: "Demo-Password-2026!" };
const WAIT = { timeout: 30_000 };

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.on("error", reject);
  });
}

/// Starts local-stack with `args` and resolves once it says it is ready.
async function startStack(args = []) {
  const port = await freePort();
  const child = spawn(binary, ["--port", String(port), "--web-dir", path.join(root, "web"), ...args], {
    cwd: root,
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
    log: () => output,
    stop: () =>
      new Promise((resolve) => {
        child.removeAllListeners("exit");
        child.on("exit", resolve);
        child.kill("SIGINT");
      }),
  };
}

let browser;

before(async () => {
  mkdirSync(screenshots, { recursive: true });
  browser = await chromium.launch({
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
});

after(async () => {
  await browser?.close();
});

/// A fresh page that records script errors and dialogs, which no test expects.
async function openPage(url) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 900 } });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("dialog", (dialog) => {
    problems.push(`dialog: ${dialog.message()}`);
    dialog.dismiss();
  });
  await page.goto(url);
  return { page, problems };
}

async function signIn(page, { email, password }) {
  const form = page.locator("#sign-in-form");
  await form.getByLabel("E-mail").fill(email);
  await form.getByLabel("Password").fill(password);
  await form.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "New job" }).waitFor(WAIT);
}

/// Submits a prompt and returns the job's list item once the job has ended.
async function submitAndWait(page, prompt) {
  await page.getByLabel("Prompt", { exact: true }).fill(prompt);
  await page.getByRole("button", { name: "Submit" }).click();
  const job = page.locator("li.job").first();
  await job.locator('[data-field="status"]').waitFor(WAIT);
  const id = await job.getAttribute("data-job-id");
  const item = page.locator(`li.job[data-job-id="${id}"]`);
  await page.waitForFunction(
    (jobId) => ["succeeded", "failed"].includes(document.querySelector(`li.job[data-job-id="${jobId}"]`)?.dataset.status),
    id,
    WAIT,
  );
  return { id, item };
}

describe("web UI on the local stack", () => {
  let stack;
  before(async () => {
    stack = await startStack();
  });
  after(async () => {
    await stack?.stop();
  });

  test("a new user signs up, confirms, signs in and reads the generated answer", async () => {
    const { page, problems } = await openPage(stack.url);
    const email = `new-user-${Date.now()}@example.com`;

    await page.getByRole("button", { name: "Create an account" }).click();
    const signUp = page.locator("#sign-up-form");
    await signUp.getByLabel("E-mail").fill(email);
    await signUp.getByLabel("Password").fill("Correct-Horse-Battery-9!");
    await signUp.getByRole("button", { name: "Create account" }).click();
    await page.getByLabel("Confirmation code").waitFor(WAIT);
    assert.match(await page.locator("#confirm-form").innerText(), /accepts any code/);
    await page.getByLabel("Confirmation code").fill("123456");
    await page.getByRole("button", { name: "Confirm and sign in" }).click();
    await page.getByRole("heading", { name: "New job" }).waitFor(WAIT);
    assert.equal(await page.locator("#account-email").innerText(), email);

    const prompt = "Write a haiku about queues\n  and keep   the spacing";
    const { id, item } = await submitAndWait(page, prompt);
    assert.equal(await item.getAttribute("data-status"), "succeeded");
    const output = item.locator("pre.output", { hasText: "You asked" });
    await output.waitFor(WAIT);
    const text = await output.textContent();
    assert.match(text, /offline model/);
    assert.ok(text.endsWith(`You asked: ${prompt}`), `whitespace kept: ${JSON.stringify(text)}`);
    assert.match(await item.locator('[data-field="usage"]').innerText(), /tokens in, \d+ out/);
    await page.screenshot({ path: path.join(screenshots, "job-succeeded.png"), fullPage: true });

    // A reload keeps the session and shows the job again, from the API.
    await page.reload();
    const again = page.locator(`li.job[data-job-id="${id}"]`);
    await again.waitFor(WAIT);
    assert.equal(await again.getAttribute("data-status"), "succeeded");
    await again.locator("summary").click();
    await again.locator("pre.output", { hasText: "You asked" }).waitFor(WAIT);
    assert.equal(await again.locator("pre.output").textContent(), text);
    assert.deepEqual(problems, []);
  });

  test("model output is shown as text and runs nothing", async () => {
    const { page, problems } = await openPage(stack.url);
    await signIn(page, DEMO);
    const attack = `<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"><b>bold</b>`;
    const { item } = await submitAndWait(page, attack);
    assert.equal(await item.getAttribute("data-status"), "succeeded");
    const output = item.locator("pre.output");
    assert.ok((await output.textContent()).includes(attack), "the markup is shown literally");
    assert.equal(await output.locator("img, script, b").count(), 0, "no element was created from it");
    assert.equal(await item.locator('[data-field="prompt"] *').count(), 0);
    assert.equal(await page.evaluate(() => window.__pwned), undefined);
    assert.deepEqual(problems, []);
  });

  test("a wrong password and a bad request are explained in sentences", async () => {
    const { page } = await openPage(stack.url);
    const form = page.locator("#sign-in-form");
    await form.getByLabel("E-mail").fill(DEMO.email);
    await form.getByLabel("Password").fill("not-the-password");
    await form.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("alert").filter({ hasText: "Wrong e-mail or password." }).waitFor(WAIT);

    await signIn(page, DEMO);
    await page.getByLabel("Prompt", { exact: true }).fill("hello");
    await page.getByLabel("Max tokens").fill("999999");
    await page.getByRole("button", { name: "Submit" }).click();
    const alert = page.getByRole("alert");
    await alert.filter({ hasText: "max_tokens" }).waitFor(WAIT);
    assert.match(await alert.innerText(), /must be between 1 and \d+/);
  });

  test("signing out returns to the sign-in form", async () => {
    const { page } = await openPage(stack.url);
    await signIn(page, DEMO);
    await page.getByRole("button", { name: "Sign out" }).click();
    await page.getByRole("heading", { name: "Sign in" }).waitFor(WAIT);
    await page.reload();
    await page.getByRole("heading", { name: "Sign in" }).waitFor(WAIT);
  });
});

describe("web UI with a failing model", () => {
  let stack;
  before(async () => {
    stack = await startStack(["--error-rate", "1"]);
  });
  after(async () => {
    await stack?.stop();
  });

  test("a failed job shows its error", async () => {
    const { page, problems } = await openPage(stack.url);
    await signIn(page, DEMO);
    const { item } = await submitAndWait(page, "this one will fail");
    assert.equal(await item.getAttribute("data-status"), "failed");
    const error = item.locator('[data-field="error"]');
    assert.match(await error.innerText(), /^Failed: The request was refused/);
    assert.equal(await item.locator('[data-field="output-box"]').isHidden(), true);
    await page.screenshot({ path: path.join(screenshots, "job-failed.png"), fullPage: true });
    assert.deepEqual(problems, []);
  });
});

describe("web UI with a slow model", () => {
  let stack;
  before(async () => {
    stack = await startStack(["--latency-ms", "5000"]);
  });
  after(async () => {
    await stack?.stop();
  });

  test("Stop cancels a running job, which then shows no output", async () => {
    const { page, problems } = await openPage(stack.url);
    await signIn(page, DEMO);
    await page.getByLabel("Prompt", { exact: true }).fill("take your time");
    await page.getByRole("button", { name: "Submit" }).click();
    const item = page.locator("li.job").first();
    const stop = item.getByRole("button", { name: "Stop" });
    await stop.waitFor(WAIT);
    await stop.click();
    await page.waitForFunction(
      () => document.querySelector("li.job")?.dataset.status === "cancelled",
      null,
      WAIT,
    );
    assert.equal(await stop.isHidden(), true, "no Stop button on a finished job");
    assert.equal(await item.locator('[data-field="output-box"]').isHidden(), true);
    // The model's late answer changes nothing: the job stays cancelled.
    await page.waitForTimeout(6000);
    await page.reload();
    await page.locator("li.job").first().waitFor(WAIT);
    assert.equal(await page.locator("li.job").first().getAttribute("data-status"), "cancelled");
    assert.deepEqual(problems, []);
  });
});
