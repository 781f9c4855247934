// How soon the web UI shows a job's text: the time from the click on Submit to the first
// generated word on the page, and to the final text, measured in headless Chromium against
// the local stack with the offline model at full speed. Also how long a long-poll answer
// comes after the flush it reports (its `updated_at`, on the same machine's clock).
//
//   cargo build -p local --bin local-stack        (or --release, with LOCAL_STACK_BIN)
//   npm ci --prefix tests/e2e                     (playwright-core; Chromium from Debian)
//   node scripts/bench_ui.mjs [--jobs 50] [--words-per-second 0] [--json figures.json]
//
// Jobs are submitted one after another, each once the previous one's text is complete, as a
// person would. A benchmark, not a test: it prints figures and never fails on them.

import { writeFileSync } from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";
import { launchChromium, root, signIn, startStack } from "../tests/e2e/local-stack.mjs";

const { values: options } = parseArgs({
  options: {
    jobs: { type: "string", default: "50" },
    "words-per-second": { type: "string", default: "0" },
    json: { type: "string" },
  },
});
const jobs = Number(options.jobs);
const pace = options["words-per-second"];

function percentile(values, p) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

const summary = (values) => ({
  p50: percentile(values, 50),
  p95: percentile(values, 95),
  max: Math.max(...values),
  n: values.length,
});

const stack = await startStack(["--words-per-second", pace]);
const browser = await launchChromium();
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
  // Each long-poll answer of a running job: how long after its flush it arrived.
  const afterFlush = [];
  page.on("response", async (response) => {
    if (!/\/jobs\/[0-9a-f-]+\?.*wait=/.test(response.url())) return;
    const arrived = Date.now();
    const job = await response.json().catch(() => null);
    if (job?.status === "running" && job.output) afterFlush.push(arrived - Date.parse(job.updated_at));
  });
  await page.goto(stack.url);
  await signIn(page);

  const firstWord = [];
  const finalText = [];
  for (let n = 0; n < jobs; n += 1) {
    await page.getByLabel("Prompt", { exact: true }).fill(`Benchmark job ${n}: say something.`);
    // Watched from inside the page, frame by frame, from the click: the first frame whose
    // new job shows any text, and the first that shows it finished.
    const timings = page.evaluate(
      () =>
        new Promise((resolve) => {
          const known = new Set([...document.querySelectorAll("li.job")].map((li) => li.dataset.jobId));
          const clicked = performance.now();
          let first;
          const watch = () => {
            const item = [...document.querySelectorAll("li.job")].find((li) => !known.has(li.dataset.jobId));
            const text = item?.querySelector('[data-field="markdown"]')?.textContent.trim();
            if (text && first === undefined) first = performance.now() - clicked;
            if (item?.dataset.status === "succeeded" && text) {
              resolve({ first, final: performance.now() - clicked });
            } else {
              requestAnimationFrame(watch);
            }
          };
          requestAnimationFrame(watch);
        }),
    );
    await page.getByRole("button", { name: "Submit" }).click();
    const { first, final } = await timings;
    firstWord.push(first);
    finalText.push(final);
  }

  const figures = {
    jobs,
    wordsPerSecond: Number(pace),
    firstWordMs: summary(firstWord),
    finalTextMs: summary(finalText),
    longPollAfterFlushMs: summary(afterFlush),
  };
  const line = (name, s) =>
    `${name.padEnd(34)} p50 ${s.p50.toFixed(0).padStart(5)} ms   p95 ${s.p95.toFixed(0).padStart(5)} ms   max ${s.max.toFixed(0).padStart(5)} ms   (n=${s.n})`;
  console.log(`${jobs} jobs, offline model at ${Number(pace) || "full"} ${Number(pace) ? "words a second" : "speed"}`);
  console.log(line("Submit → first word on the page", figures.firstWordMs));
  console.log(line("Submit → final text on the page", figures.finalTextMs));
  console.log(line("flush → long-poll answer arrives", figures.longPollAfterFlushMs));
  if (options.json) writeFileSync(path.resolve(root, options.json), JSON.stringify(figures, null, 2));
} finally {
  await browser.close();
  await stack.stop();
}
