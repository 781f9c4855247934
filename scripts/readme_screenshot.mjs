// Takes the README's picture of a job whose text is being written: the local stack with a
// slow offline model and budgets, the user's usage against them, a finished job above, a
// running one halfway through its answer.
//
//   node scripts/readme_screenshot.mjs        (writes docs/images/streaming-job.png)

import path from "node:path";
import { launchChromium, root, signIn, startStack } from "../tests/e2e/local-stack.mjs";

const output = path.join(root, "docs/images/streaming-job.png");
const budgets = { BUDGET_TOKENS_PER_DAY: "5000", BUDGET_USD_PER_MONTH: "5" };
const stack = await startStack(["--words-per-second", "8"], { env: budgets });
const browser = await launchChromium();
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 860 }, colorScheme: "light" });
  await page.goto(stack.url);
  await signIn(page);

  const submit = async (prompt) => {
    await page.getByLabel("Prompt", { exact: true }).fill(prompt);
    const answer = page.waitForResponse((response) => response.url().endsWith("/generate"));
    await page.getByRole("button", { name: "Submit" }).click();
    return (await (await answer).json()).job_id;
  };
  const first = await submit("## Queues\n\n- decouple producers from consumers\n- absorb bursts");
  await page.waitForFunction(
    (id) => document.querySelector(`li.job[data-job-id="${id}"]`)?.dataset.status === "succeeded",
    first,
    { timeout: 60_000 },
  );
  const running = await submit("Explain, in a few sentences, why a job queue makes an LLM service resilient.");
  // Halfway: running, with a dozen words written.
  await page.waitForFunction(
    (id) => {
      const item = document.querySelector(`li.job[data-job-id="${id}"]`);
      const words = item?.querySelector('[data-field="markdown"]')?.textContent.trim().split(/\s+/).length ?? 0;
      return item?.dataset.status === "running" && words >= 16;
    },
    running,
    { timeout: 60_000 },
  );
  await page.screenshot({ path: output, fullPage: true });
  console.log(`wrote ${path.relative(root, output)}`);
} finally {
  await browser.close();
  await stack.stop();
}
