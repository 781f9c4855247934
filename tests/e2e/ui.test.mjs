// The web UI in a real headless Chromium, against the real local stack (local-stack binary:
// moto, the offline model, the worker and the gateway), as a new user would use it.
//
// The offline model answers "… You asked: <prompt>", so a prompt written in Markdown (or
// carrying an attack) comes back inside the output, as a model's answer would.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { DEMO, launchChromium, root, signIn, startStack } from "./local-stack.mjs";

const screenshots = path.join(root, "tests/e2e/screenshots");
const WAIT = { timeout: 30_000 };
const RESTARTED = "The service was restarted; please sign in again.";

let browser;

before(async () => {
  mkdirSync(screenshots, { recursive: true });
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
});

/// A fresh page that records script errors, dialogs and Content Security Policy violations,
/// which no test expects. `problems(page)` returns them all.
async function openPage(url, { viewport = { width: 1100, height: 900 }, ...options } = {}) {
  const context = await browser.newContext({ viewport, ...options });
  const page = await context.newPage();
  const seen = [];
  page.on("pageerror", (error) => seen.push(`page error: ${error.message}`));
  page.on("dialog", (dialog) => {
    seen.push(`dialog: ${dialog.message()}`);
    dialog.dismiss();
  });
  await page.addInitScript(() => {
    window.__violations = [];
    document.addEventListener("securitypolicyviolation", (event) => {
      window.__violations.push(`${event.violatedDirective} blocked ${event.blockedURI || "inline"}`);
    });
  });
  await page.goto(url);
  const problems = async () => [
    ...seen,
    ...(await page.evaluate(() => window.__violations ?? []).catch(() => [])).map((v) => `CSP: ${v}`),
  ];
  return { page, problems };
}

/// Submits a prompt and returns the job's list item once the job has ended.
async function submitAndWait(page, prompt) {
  await page.getByLabel("Prompt", { exact: true }).fill(prompt);
  const { id, item } = await submit(page);
  await page.waitForFunction(
    (jobId) => ["succeeded", "failed"].includes(document.querySelector(`li.job[data-job-id="${jobId}"]`)?.dataset.status),
    id,
    WAIT,
  );
  return { id, item };
}

/// Clicks Submit; resolves to the request's body and the new job's list item.
async function submit(page) {
  const answer = page.waitForResponse((r) => r.url().endsWith("/generate"));
  await page.getByRole("button", { name: "Submit" }).click();
  const response = await answer;
  const { job_id: id } = await response.json();
  return { id, body: response.request().postDataJSON(), item: page.locator(`li.job[data-job-id="${id}"]`) };
}

function statusIs(page, id, status) {
  return page.waitForFunction(
    ([jobId, wanted]) => document.querySelector(`li.job[data-job-id="${jobId}"]`)?.dataset.status === wanted,
    [id, status],
    WAIT,
  );
}

/// The job's output as it is shown by default: rendered Markdown.
const rendered = (item) => item.locator('[data-field="markdown"]');

async function noHorizontalScroll(page) {
  const [scrollWidth, clientWidth] = await page.evaluate(() => [
    document.scrollingElement.scrollWidth,
    document.scrollingElement.clientWidth,
  ]);
  assert.ok(scrollWidth <= clientWidth, `page scrolls sideways: ${scrollWidth} > ${clientWidth}`);
}

const isJobRead = (url) => /\/jobs\/[0-9a-f-]{36}$/.test(new URL(url).pathname);

/// The usage panel's line for `period` ("day" or "month"): its text, what is reserved, the
/// note under the meter, and the meter.
function usageLine(page, period) {
  const line = page.getByRole("region", { name: "Your usage" }).locator(`[data-period="${period}"]`);
  return {
    used: line.locator('[data-field="used"]'),
    reserved: line.locator('[data-field="reserved"]'),
    note: line.locator('[data-field="note"]'),
    meter: line.getByRole("meter"),
  };
}

/// Waits until `locator`'s text is exactly `text`.
async function textIs(locator, text) {
  const deadline = Date.now() + WAIT.timeout;
  let seen = await locator.textContent();
  while (seen !== text && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    seen = await locator.textContent();
  }
  assert.equal(seen, text);
}

/// Counts the page's reads of GET /usage.
function countUsageReads(page) {
  const reads = [];
  page.on("request", (request) => {
    if (new URL(request.url()).pathname === "/usage") reads.push(Date.now());
  });
  return reads;
}

/// "12 tokens in, 80 out, cost $0.000012" → its figures.
async function jobUsage(item) {
  const text = await item.locator('[data-field="usage"]').innerText();
  const match = text.match(/^(\d+) tokens in, (\d+) out, cost (\$[\d.]+)$/);
  assert.ok(match, `a job's usage: ${text}`);
  return { tokens: Number(match[1]) + Number(match[2]), cost: match[3] };
}

/// A job's worst case, as the service reserves it: the prompt's and system prompt's UTF-8
/// bytes, 64 for the chat template, and max_tokens.
const worstCase = (prompt, maxTokens, system = "") =>
  Buffer.byteLength(prompt.trim()) + Buffer.byteLength(system.trim()) + 64 + maxTokens;

// Each group has its own stack: the groups run side by side, the tests of a group in turn
// (nested suites inherit concurrency, so each says so).
const IN_TURN = { concurrency: false };

describe("the web UI", { concurrency: true }, () => {
  describe("the page as served", IN_TURN, () => {
    let stack;
    before(async () => {
      stack = await startStack();
    });
    after(async () => {
      await stack?.stop();
    });

    test("its Content Security Policy is the gateway's, and it loads only its own files", async () => {
      const gateway = readFileSync(path.join(root, "local/src/gateway.rs"), "utf8");
      const policy = gateway.match(/pub const CONTENT_SECURITY_POLICY: &str = "([^"]+)";/)[1];
      const response = await fetch(stack.url);
      assert.equal(response.headers.get("content-security-policy"), policy);
      const html = await response.text();
      const meta = html.match(/http-equiv="Content-Security-Policy"\s+content="([^"]+)"/)[1];
      assert.equal(meta, policy, "web/index.html carries the header's policy");
      for (const [, src] of html.matchAll(/<(?:script|link)\b[^>]*(?:src|href)="([^"]+)"/g)) {
        assert.ok(!/^[a-z]+:|^\/\//i.test(src), `same-origin only: ${src}`);
      }

      const icon = await fetch(`${stack.url}/favicon.svg`);
      assert.equal(icon.status, 200);
      assert.equal(icon.headers.get("content-type"), "image/svg+xml");
      assert.match(html, /<link rel="icon" href="favicon.svg" type="image\/svg\+xml">/);
    });

    test("the vendored libraries are the pinned versions, unchanged", () => {
      const vendor = path.join(root, "web/vendor");
      const sums = readFileSync(path.join(vendor, "SHA256SUMS"), "utf8").trim().split("\n");
      assert.ok(sums.length >= 4);
      for (const line of sums) {
        const [sum, file] = line.split(/\s+\*?/);
        const actual = createHash("sha256").update(readFileSync(path.join(vendor, file))).digest("hex");
        assert.equal(actual, sum, `web/vendor/${file} is what scripts/vendor-web.sh fetched`);
      }
      const script = readFileSync(path.join(root, "scripts/vendor-web.sh"), "utf8");
      const pins = Object.fromEntries([...script.matchAll(/^ {2}"(marked|dompurify) (\S+) sha512-/gm)].map((m) => [m[1], m[2]]));
      const versions = readFileSync(path.join(vendor, "VERSIONS"), "utf8");
      assert.match(versions, new RegExp(`^marked ${pins.marked}$`, "m"));
      assert.match(versions, new RegExp(`^dompurify ${pins.dompurify}$`, "m"));
      assert.match(readFileSync(path.join(vendor, "marked/marked.esm.js"), "utf8"), new RegExp(`marked v${pins.marked} `));
      assert.match(readFileSync(path.join(vendor, "dompurify/purify.min.js"), "utf8"), new RegExp(`DOMPurify ${pins.dompurify} `));
    });
  });

  describe("answers on the local stack", IN_TURN, () => {
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
      // Opened by itself, as Markdown; the raw text keeps every space.
      await rendered(item).filter({ hasText: "You asked" }).waitFor(WAIT);
      assert.match(await rendered(item).innerText(), /offline model/);
      await item.getByRole("button", { name: "Raw text" }).click();
      const output = item.locator("pre.output", { hasText: "You asked" });
      await output.waitFor(WAIT);
      const text = await output.textContent();
      assert.match(text, /offline model/);
      assert.ok(text.endsWith(`You asked: ${prompt}`), `whitespace kept: ${JSON.stringify(text)}`);
      // Amazon Nova Micro has a shipped price: the job shows what it cost.
      assert.match(await item.locator('[data-field="usage"]').innerText(), /^\d+ tokens in, \d+ out, cost \$0\.0*\d{2}$/);
      await page.screenshot({ path: path.join(screenshots, "job-succeeded.png"), fullPage: true });

      // A reload keeps the session and shows the job again, from the API.
      await page.reload();
      const again = page.locator(`li.job[data-job-id="${id}"]`);
      await again.waitFor(WAIT);
      assert.equal(await again.getAttribute("data-status"), "succeeded");
      await again.locator("summary").click();
      await rendered(again).filter({ hasText: "You asked" }).waitFor(WAIT);
      await again.getByRole("button", { name: "Raw text" }).click();
      assert.equal(await again.locator("pre.output").textContent(), text);
      assert.deepEqual(await problems(), []);
    });

    test("raw HTML in model output is shown as text and runs nothing", async () => {
      const { page, problems } = await openPage(stack.url);
      await signIn(page, DEMO);
      const attack = `<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"><b>bold</b>`;
      const { item } = await submitAndWait(page, attack);
      assert.equal(await item.getAttribute("data-status"), "succeeded");
      await rendered(item).filter({ hasText: "You asked" }).waitFor(WAIT);
      assert.ok((await rendered(item).textContent()).includes(attack), "the markup is shown literally");
      assert.ok((await item.locator("pre.output").textContent()).includes(attack));
      assert.equal(await item.locator("img, script, b").count(), 0, "no element was created from it");
      assert.equal(await item.locator('[data-field="prompt"] *').count(), 0);
      assert.equal(await page.evaluate(() => window.__pwned), undefined);
      assert.deepEqual(await problems(), []);
    });

    test("output is rendered as Markdown: headings, lists, code blocks, tables and links", async () => {
      const { page, problems } = await openPage(stack.url);
      await signIn(page, DEMO);
      const prompt = [
        "Markdown, please",
        "# Heading one",
        "## Heading two",
        "- apples\n- **pears**\n- `plums`",
        "1. first\n2. second",
        "```js\nconst answer = 42;\n```",
        "| name | count |\n|:-----|------:|\n| cats | 2 |\n| dogs | 3 |",
        "See [the docs](https://example.com/docs) and ~~nothing else~~.",
      ].join("\n\n");
      const { item } = await submitAndWait(page, prompt);
      const view = rendered(item);
      await view.locator("h3").waitFor(WAIT);
      // The page's headings are h1 and h2, so an answer's start at h3.
      assert.equal(await view.locator("h3").innerText(), "Heading one");
      assert.equal(await view.locator("h4").innerText(), "Heading two");
      assert.equal(await view.locator("h1, h2").count(), 0);
      assert.deepEqual(await view.locator("ul > li").allInnerTexts(), ["apples", "pears", "plums"]);
      assert.equal(await view.locator("ul strong").innerText(), "pears");
      assert.equal(await view.locator("li code").innerText(), "plums");
      assert.deepEqual(await view.locator("ol > li").allInnerTexts(), ["first", "second"]);
      assert.equal((await view.locator("pre > code").innerText()).trim(), "const answer = 42;");
      assert.deepEqual(await view.locator("table th").allInnerTexts(), ["name", "count"]);
      assert.equal(await view.locator("table tbody tr").count(), 2);
      assert.equal(await view.locator("table td").nth(1).getAttribute("align"), "right");
      assert.equal(await view.locator("del").innerText(), "nothing else");
      const link = view.getByRole("link", { name: "the docs" });
      assert.equal(await link.getAttribute("href"), "https://example.com/docs");
      assert.equal(await link.getAttribute("target"), "_blank");
      assert.equal(await link.getAttribute("rel"), "noopener noreferrer");
      assert.equal(await view.locator("[class], [style], [id]").count(), 0, "no ids, classes or styles");
      await item.screenshot({ path: path.join(screenshots, "markdown.png") });
      assert.deepEqual(await problems(), []);
    });

    test("nothing in Markdown output can run or load: links, raw HTML, data: URLs, SVG", async () => {
      const { page, problems } = await openPage(stack.url);
      await page.addInitScript(() => {
        window.__fired = [];
        window.pwn = (n) => window.__fired.push(n);
      });
      await page.reload();
      const requests = [];
      page.on("request", (request) => requests.push(request.url()));
      await signIn(page, DEMO);
      const corpus = [
        "XSS corpus",
        "[a link](javascript:pwn(1))",
        "[spaced](  javascript:pwn(2))",
        "[mixed case](JaVaScRiPt:pwn(3))",
        "[tab inside](jav&#x09;ascript:pwn(4))",
        "<javascript:pwn(5)>",
        "[reference link][r]\n\n[r]: javascript:pwn(6)",
        "[data link](data:text/html;base64,PHNjcmlwdD5wd24oNyk8L3NjcmlwdD4=)",
        "![data image](data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9cHduKDgpPjwvc3ZnPg==)",
        "![remote image](http://127.0.0.1:9/pixel.png)",
        "<script>pwn(9)</script>",
        '<img src="/x.png" onerror="pwn(10)">',
        '<iframe src="javascript:pwn(11)"></iframe>',
        '<svg onload="pwn(12)"><script>pwn(13)</script></svg>',
        '<a href="#" onclick="pwn(14)">raw anchor</a>',
        '<details open ontoggle="pwn(15)"><summary>x</summary></details>',
        '<math><mi xlink:href="javascript:pwn(16)">m</mi></math>',
        "<style>body { display: none }</style>",
        '<form action="javascript:pwn(17)"><button>go</button></form>',
        '<object data="javascript:pwn(18)"></object>',
        "[vb](vbscript:pwn(19))",
        "[relative](/jobs) [mail](mailto:someone@example.com) [ftp](ftp://example.com/file)",
        '<div style="background:url(javascript:pwn(20))" onmouseover="pwn(21)">hover</div>',
        "[fine](https://example.com/safe)",
      ].join("\n\n");
      const { item } = await submitAndWait(page, corpus);
      const view = rendered(item);
      await view.getByRole("link", { name: "fine" }).waitFor(WAIT);

      // Use it as a person would: hover and click what looks like a link but is not one.
      const inert = await view.locator("a:not([href])").all();
      assert.ok(inert.length >= 11, `${inert.length} links made inert`);
      for (const element of inert) {
        await element.hover();
        await element.click();
      }
      await page.waitForTimeout(300);

      assert.deepEqual(await page.evaluate(() => window.__fired), [], "no payload ran");
      const forbidden = "script, img, iframe, svg, math, style, object, embed, form, input, button, details, video, audio, link, meta, base";
      assert.equal(await view.locator(forbidden).count(), 0, "no such element was created");
      const attributes = await view.evaluate((root) =>
        [...root.querySelectorAll("*")].flatMap((element) =>
          [...element.attributes].map((attribute) => `${element.tagName} ${attribute.name}=${attribute.value}`),
        ),
      );
      for (const attribute of attributes) {
        assert.doesNotMatch(attribute, /^\S+ (on|style|src|xlink|action|formaction|data)/i, attribute);
        if (/ href=/.test(attribute)) assert.match(attribute, /^A href=https?:\/\//, attribute);
      }
      const hrefs = await view.locator("a[href]").evaluateAll((links) => links.map((a) => [a.href, a.target, a.rel]));
      assert.deepEqual(hrefs, [
        ["http://127.0.0.1:9/pixel.png", "_blank", "noopener noreferrer"],
        ["https://example.com/safe", "_blank", "noopener noreferrer"],
      ]);
      assert.ok((await view.textContent()).includes("<script>pwn(9)</script>"), "raw HTML is shown as text");
      assert.ok((await view.textContent()).includes("Image: data image"), "an image becomes a link, or text");
      const strays = requests.filter((url) => !url.startsWith(stack.url) || /x\.png|pixel/.test(url));
      assert.deepEqual(strays, [], "nothing was loaded from the output");
      assert.deepEqual(await problems(), []);
    });

    test("the raw text view and the copy button", async () => {
      const { page, problems } = await openPage(stack.url);
      await page.context().grantPermissions(["clipboard-read", "clipboard-write"], { origin: stack.url });
      await signIn(page, DEMO);
      const prompt = "Copy me\n\n- one\n- two";
      const { item } = await submitAndWait(page, prompt);
      const raw = item.getByRole("button", { name: "Raw text" });
      const pre = item.locator("pre.output");
      await rendered(item).locator("li").first().waitFor(WAIT);
      assert.equal(await raw.getAttribute("aria-pressed"), "false");
      assert.equal(await pre.isHidden(), true);

      await raw.click();
      assert.equal(await raw.getAttribute("aria-pressed"), "true");
      assert.equal(await rendered(item).isHidden(), true);
      assert.ok((await pre.innerText()).endsWith(`You asked: ${prompt}`), "the Markdown source, as written");
      await raw.click();
      assert.equal(await pre.isHidden(), true);
      assert.equal(await rendered(item).isVisible(), true);

      await item.getByRole("button", { name: "Copy" }).click();
      await item.getByRole("status").filter({ hasText: "Copied" }).waitFor(WAIT);
      const copied = await page.evaluate(() => navigator.clipboard.readText());
      assert.equal(copied, await pre.textContent());
      assert.deepEqual(await problems(), []);
    });

    /// Answers reads of the next job submitted with `answer(search, index)`: a job object, or
    /// null to let the read through to the service. The job's live text is played too: the
    /// sockets the page opens from now on to the Event API (it opens one as it signs in, so
    /// call this before) are acknowledged and take subscriptions, but carry no text: the real
    /// job's would not be the played one's.
    async function playJob(page, answer) {
      const asked = [];
      let id;
      await page.routeWebSocket(/\/event\/realtime$/, (ws) => {
        ws.onMessage((message) => {
          const { type, id: subscription } = JSON.parse(message);
          if (type === "connection_init") ws.send(JSON.stringify({ type: "connection_ack", connectionTimeoutMs: 300_000 }));
          if (type === "subscribe") ws.send(JSON.stringify({ type: "subscribe_success", id: subscription }));
        });
      });
      await page.route("**/generate", async (route) => {
        const response = await route.fetch();
        id = (await response.json()).job_id;
        await route.fulfill({ response });
      });
      await page.route(isJobRead, async (route) => {
        const url = new URL(route.request().url());
        if (!url.pathname.endsWith(`/${id}`)) return route.continue();
        asked.push(url.search);
        const job = await answer(url.search, asked.length - 1);
        if (!job) return route.continue().catch(() => {});
        const now = new Date().toISOString();
        const base = { job_id: id, model: "amazon.nova-micro-v1:0", prompt: "tell me a story", attempts: 1 };
        await route.fulfill({ json: { ...base, created_at: now, updated_at: now, ...job } }).catch(() => {});
      });
      return asked;
    }

    test("a running job's text grows as the long-poll answers bring it, then it shows its usage", async () => {
      const { page, problems } = await openPage(stack.url);
      // Played as a streaming service gives them, each held a moment as a long-poll is until
      // the next change, so that each state can be seen.
      const states = [
        { status: "running", seq: 1, output: "Once" },
        { status: "running", seq: 2, output: "Once upon a time" },
        { status: "running", seq: 3, output: "Once upon a time, in a **queue**" },
        {
          status: "succeeded",
          seq: 4,
          output: "Once upon a time, in a **queue**, the end.",
          usage: { input_tokens: 4, output_tokens: 9 },
          completed_at: new Date().toISOString(),
        },
      ];
      const asked = await playJob(page, async (search, index) => {
        await new Promise((resolve) => setTimeout(resolve, 700));
        return states[Math.min(index, states.length - 1)];
      });
      await signIn(page, DEMO);
      await page.getByLabel("Prompt", { exact: true }).fill("tell me a story");
      const { id, item } = await submit(page);
      await rendered(item).filter({ hasText: "Once" }).waitFor(WAIT);
      assert.equal((await rendered(item).innerText()).trim(), "Once");
      assert.equal(await item.getAttribute("data-status"), "running");
      assert.equal(await item.locator("summary").innerText(), "Output so far");
      assert.equal(await item.locator('[data-field="usage"]').innerText(), "");
      await rendered(item).locator("strong", { hasText: "queue" }).waitFor(WAIT);
      assert.equal(await item.getAttribute("data-status"), "running");
      await statusIs(page, id, "succeeded");
      assert.equal((await rendered(item).innerText()).trim(), "Once upon a time, in a queue, the end.");
      assert.equal(await item.locator('[data-field="usage"]').innerText(), "4 tokens in, 9 out");
      // One loop: the first ask learns seq, each next one waits for a change past it.
      assert.deepEqual(asked, ["", "?wait=20&after=1", "?wait=20&after=2", "?wait=20&after=3"]);
      assert.deepEqual(await problems(), []);
    });

    test("a refreshed list that says a job finished replaces the text read while it ran", async () => {
      const { page, problems } = await openPage(stack.url);
      // The first read finds the job running with a little text; the long-poll after it is
      // held (as if the job went quiet). The real job has finished meanwhile.
      let release;
      const held = new Promise((resolve) => {
        release = resolve;
      });
      await playJob(page, async (search, index) => {
        if (index === 0) return { status: "running", seq: 1, output: "Once" };
        if (search) await held;
        return null;
      });
      await signIn(page, DEMO);
      await page.getByLabel("Prompt", { exact: true }).fill("tell me a story");
      const { id, item } = await submit(page);
      await rendered(item).filter({ hasText: "Once" }).waitFor(WAIT);
      // Straight to the service, around the page: wait until the job has really finished.
      const token = await page.evaluate(() => JSON.parse(sessionStorage.getItem("bedrock-jobs.session")).accessToken);
      for (let status = ""; status !== "succeeded"; ) {
        await new Promise((resolve) => setTimeout(resolve, 200));
        const answer = await fetch(`${stack.url}/jobs/${id}`, { headers: { Authorization: `Bearer ${token}` } });
        ({ status } = await answer.json());
      }
      assert.equal((await rendered(item).innerText()).trim(), "Once", "the page still waits");
      await page.getByRole("button", { name: "Refresh" }).click();
      await statusIs(page, id, "succeeded");
      await rendered(item).filter({ hasText: "You asked: tell me a story" }).waitFor(WAIT);
      assert.match(await item.locator('[data-field="usage"]').innerText(), /tokens in, \d+ out/);
      release();
      assert.deepEqual(await problems(), []);
    });

    test("a stopped job shows the use and cost of a call that ended after the stop, and none without", async () => {
      const { page, problems } = await openPage(stack.url);
      await signIn(page, DEMO);
      const cancelled = { status: "cancelled", seq: 2, output: "Once upon", completed_at: new Date().toISOString() };
      for (const [answer, shown] of [
        [{ ...cancelled, usage: { input_tokens: 4, output_tokens: 9 }, cost_usd: 0.25 }, "4 tokens in, 9 out, cost $0.2500"],
        [cancelled, ""],
      ]) {
        await playJob(page, async (search, index) =>
          index === 0 ? { status: "running", seq: 1, output: "Once" } : answer,
        );
        await page.getByLabel("Prompt", { exact: true }).fill("tell me a story");
        const { id, item } = await submit(page);
        await statusIs(page, id, "cancelled");
        assert.equal(await item.locator('[data-field="usage"]').innerText(), shown);
      }
      assert.deepEqual(await problems(), []);
    });
  });

  describe("forms, layout and messages on the local stack", IN_TURN, () => {
    let stack;
    before(async () => {
      stack = await startStack();
    });
    after(async () => {
      await stack?.stop();
    });

    test("a finished job shows its settings, its times, and a long prompt clamped until expanded", async () => {
      const { page, problems } = await openPage(stack.url);
      await signIn(page, DEMO);
      await page.getByLabel("Max tokens").fill("300");
      await page.getByLabel("Temperature").fill("0.3");
      await page.locator("summary", { hasText: "System prompt" }).click();
      await page.getByRole("textbox", { name: "System prompt" }).fill("Answer in one line.");
      const prompt = Array.from({ length: 12 }, (_, i) => `Line ${i + 1} of a long prompt.`).join("\n");
      const { item } = await submitAndWait(page, prompt);

      assert.equal(await item.locator('[data-field="model"]').innerText(), "amazon.nova-micro-v1:0");
      assert.equal(await item.locator('[data-field="max-tokens"]').innerText(), "up to 300 tokens");
      assert.equal(await item.locator('[data-field="temperature"]').innerText(), "temperature 0.3");
      assert.equal(await item.locator('[data-field="system-box"]').innerText(), "System prompt: Answer in one line.");
      assert.equal(await item.locator('[data-field="retry"]').isHidden(), true);
      for (const name of ["created", "completed"]) {
        const time = item.locator(`time[data-field="${name}"]`);
        assert.match(await time.innerText(), /^(just now|\d+ s ago)$/);
        const at = Date.parse(await time.getAttribute("datetime"));
        assert.ok(Math.abs(Date.now() - at) < 60_000, `${name} is now`);
        assert.match(await time.getAttribute("title"), new RegExp(String(new Date().getFullYear())), "exact time on hover");
      }
      assert.match(await item.locator('[data-field="elapsed"]').innerText(), /^took \d+ s$/);

      // Twelve lines show as three until expanded, by mouse or keyboard.
      const shown = item.locator('[data-field="prompt"]');
      const toggle = item.getByRole("button", { name: "Show the whole prompt" });
      const height = () => shown.evaluate((element) => element.getBoundingClientRect().height);
      const clamped = await height();
      const lineHeight = await shown.evaluate((element) => parseFloat(getComputedStyle(element).lineHeight));
      assert.ok(clamped <= lineHeight * 3.5, `clamped to three lines: ${clamped}px`);
      assert.equal(await toggle.getAttribute("aria-expanded"), "false");
      assert.equal(await toggle.getAttribute("aria-controls"), await shown.getAttribute("id"));
      await toggle.focus();
      await page.keyboard.press("Enter");
      const less = item.getByRole("button", { name: "Show less" });
      assert.equal(await less.getAttribute("aria-expanded"), "true");
      assert.ok((await height()) >= lineHeight * 11.5, "all twelve lines");
      await page.keyboard.press("Space");
      assert.equal(await height(), clamped);
      assert.deepEqual(await problems(), []);
    });

    test("a 600-character word leaves no sideways scroll at 1280 and 390 px; Sign out stays on screen", async () => {
      const { page, problems } = await openPage(stack.url, { viewport: { width: 1280, height: 900 } });
      const email = `a-rather-long-address-${Date.now()}@example.com`;
      await page.getByRole("button", { name: "Create an account" }).click();
      await page.locator("#sign-up-form").getByLabel("E-mail").fill(email);
      await page.locator("#sign-up-form").getByLabel("Password").fill("Correct-Horse-Battery-9!");
      await page.getByRole("button", { name: "Create account" }).click();
      await page.getByLabel("Confirmation code").fill("1");
      await page.getByRole("button", { name: "Confirm and sign in" }).click();
      await page.getByRole("heading", { name: "New job" }).waitFor(WAIT);

      const word = "x".repeat(640);
      const { item } = await submitAndWait(page, word);
      await rendered(item).filter({ hasText: "You asked" }).waitFor(WAIT);
      await noHorizontalScroll(page);

      await page.setViewportSize({ width: 390, height: 844 });
      await noHorizontalScroll(page);
      const signOut = page.getByRole("button", { name: "Sign out" });
      const box = await signOut.boundingBox();
      assert.ok(box.x >= 0 && box.y >= 0 && box.x + box.width <= 390 && box.y + box.height <= 844, JSON.stringify(box));
      await page.screenshot({ path: path.join(screenshots, "narrow-390.png"), fullPage: true });
      await signOut.click();
      await page.getByRole("heading", { name: "Sign in" }).waitFor(WAIT);
      assert.deepEqual(await problems(), []);
    });

    test("a blank max-tokens box is left out of the request; the counter counts characters", async () => {
      const { page, problems } = await openPage(stack.url);
      await signIn(page, DEMO);
      const promptBox = page.getByLabel("Prompt", { exact: true });
      await promptBox.fill("  héllo 👋  ");
      // Characters of the trimmed prompt, as the service counts them (the emoji is one).
      assert.equal(await page.locator("#prompt-count").innerText(), "7 of 20,000 characters");

      await page.getByLabel("Max tokens").fill("");
      const { id, body, item } = await submit(page);
      assert.equal(body.prompt, "  héllo 👋  ");
      assert.ok(!("max_tokens" in body), JSON.stringify(body));
      assert.ok(!("temperature" in body), JSON.stringify(body));
      await statusIs(page, id, "succeeded");
      // The service's default, once the job says what it ran with; never 0.
      const maxTokens = item.locator('[data-field="max-tokens"]');
      if (await maxTokens.isVisible()) assert.equal(await maxTokens.innerText(), "up to 512 tokens");
      assert.equal(await page.locator("#prompt-count").innerText(), "0 of 20,000 characters");
      assert.deepEqual(await problems(), []);
    });

    test("a failed refresh keeps the list and says the service cannot be reached", async () => {
      const { page, problems } = await openPage(stack.url);
      await signIn(page, DEMO);
      await submitAndWait(page, "keep me on screen");
      const jobs = page.locator("li.job");
      const count = await jobs.count();
      assert.ok(count >= 1);

      const list = (url) => new URL(url).pathname === "/jobs";
      await page.route(list, (route) => route.abort("connectionrefused"));
      await page.getByRole("button", { name: "Refresh" }).click();
      const offline = page.getByRole("status").filter({ hasText: "can't be reached" });
      await offline.waitFor(WAIT);
      assert.equal(await jobs.count(), count, "the list is kept");
      assert.equal(await page.locator("#notice").isHidden(), true, "one message, not two");

      await page.unroute(list);
      await page.getByRole("button", { name: "Refresh" }).click();
      await offline.waitFor({ state: "hidden", ...WAIT });
      assert.equal(await jobs.count(), count);
      assert.deepEqual(await problems(), []);
    });

    test("Cognito's refusals read as sentences, and the password rules tick while typing", async () => {
      const { page, problems } = await openPage(stack.url);
      await page.getByRole("button", { name: "Create an account" }).click();
      const form = page.locator("#sign-up-form");
      const password = form.getByLabel("Password");
      const met = () =>
        form.locator("#password-rules li").evaluateAll((items) =>
          Object.fromEntries(items.map((item) => [item.dataset.rule, item.dataset.met === "true"])),
        );
      const steps = [
        ["a", { length: false, lower: true, upper: false, digit: false, symbol: false }],
        ["aB", { length: false, lower: true, upper: true, digit: false, symbol: false }],
        ["aB3", { length: false, lower: true, upper: true, digit: true, symbol: false }],
        ["aB3!", { length: false, lower: true, upper: true, digit: true, symbol: true }],
        ["aB3!aB3!aB3!", { length: true, lower: true, upper: true, digit: true, symbol: true }],
      ];
      for (const [typed, expected] of steps) {
        await password.fill(typed);
        assert.deepEqual(await met(), expected, typed);
      }
      assert.equal((await form.locator('[data-rule="length"]').textContent()).trim(), "Done: at least 12 characters");

      const sentences = [];
      const attempt = async (email, secret, type) => {
        await form.getByLabel("E-mail").fill(email);
        await password.fill(secret);
        const answer = page.waitForResponse((r) => r.url().endsWith("/cognito"));
        await form.getByRole("button", { name: "Create account" }).click();
        assert.equal((await (await answer).json()).__type, type, "refused by the local Cognito");
        const alert = page.getByRole("alert");
        await alert.waitFor(WAIT);
        const text = await alert.innerText();
        sentences.push(text);
        return text;
      };
      assert.equal(
        await attempt(`weak-${Date.now()}@example.com`, "weakpass", "InvalidPasswordException"),
        "This password is not strong enough: it needs at least 12 characters, an upper-case letter, a digit and a symbol.",
      );
      assert.equal(
        await attempt("not-an-email", "Correct-Horse-Battery-9!", "InvalidParameterException"),
        "Enter your e-mail address, such as name@example.com.",
      );
      for (const sentence of sentences) {
        assert.doesNotMatch(sentence, /`|confirm to|policy|Username should|Exception/, sentence);
        assert.match(sentence, /^[A-Z].*\.$/, "a sentence");
      }
      assert.deepEqual(await problems(), []);
    });

    test("dark mode follows the system's colour scheme", async () => {
      const { page, problems } = await openPage(stack.url);
      const background = () => page.evaluate(() => getComputedStyle(document.body).backgroundColor);
      const brightness = (rgb) => rgb.match(/\d+/g).slice(0, 3).reduce((sum, n) => sum + Number(n), 0) / 3;
      await page.emulateMedia({ colorScheme: "light" });
      const light = await background();
      await page.emulateMedia({ colorScheme: "dark" });
      const dark = await background();
      assert.ok(brightness(light) > 200, light);
      assert.ok(brightness(dark) < 60, dark);
      const text = await page.evaluate(() => getComputedStyle(document.body).color);
      assert.ok(brightness(text) > 180, `light text on dark: ${text}`);
      await signIn(page, DEMO);
      await submitAndWait(page, "Dark\n\n# Heading\n\n```\ncode\n```");
      await page.screenshot({ path: path.join(screenshots, "dark.png"), fullPage: true });
      assert.deepEqual(await problems(), []);
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

  describe("web UI with a failing model", IN_TURN, () => {
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
      assert.equal(await item.locator('[data-field="usage"]').innerText(), "", "no use or cost");
      await page.screenshot({ path: path.join(screenshots, "job-failed.png"), fullPage: true });
      assert.deepEqual(await problems(), []);
    });
  });

  describe("web UI with a throttled model", IN_TURN, () => {
    let stack;
    before(async () => {
      stack = await startStack(["--throttle-rate", "1"]);
    });
    after(async () => {
      await stack?.stop();
    });

    test("a job waiting to try the model again says which attempt it is on", async () => {
      // Every model call is throttled: attempt 1, then 2 (after 1-2 s), then 3 (2-4 s later),
      // then the job fails. One page's config.json says maxAttempts, the other's does not (as
      // configs written before it was added).
      const [withLimit, without] = await Promise.all([openPage(stack.url), openPage(stack.url)]);
      const config = (page, change) =>
        page.route("**/config.json", async (route) => {
          const response = await route.fetch();
          await route.fulfill({ response, json: change(await response.json()) });
        });
      await config(withLimit.page, (json) => ({ ...json, maxAttempts: 3 }));
      await config(without.page, ({ maxAttempts, ...json }) => json);
      await Promise.all([withLimit.page.reload(), without.page.reload()]);
      const follow = async ({ page, problems }, expected) => {
        await signIn(page, DEMO);
        await page.getByLabel("Prompt", { exact: true }).fill("try and try again");
        const { id, item } = await submit(page);
        const retry = item.locator('[data-field="retry"]');
        await retry.filter({ hasText: expected }).waitFor(WAIT);
        assert.equal(await retry.innerText(), expected);
        await statusIs(page, id, "failed");
        assert.equal(await retry.isHidden(), true, "a finished job is not retrying");
        assert.match(await item.locator('[data-field="error"]').innerText(), /^Failed: /);
        assert.deepEqual(await problems(), []);
      };
      await Promise.all([
        follow(withLimit, "retrying: attempt 2 of 3"),
        follow(without, "retrying: attempt 2"),
      ]);
    });
  });

  describe("web UI with a slow model", IN_TURN, () => {
    let stack;
    before(async () => {
      stack = await startStack(["--latency-ms", "5000"]);
    });
    after(async () => {
      await stack?.stop();
    });

    test("a running job is followed without asking in a tight loop", async () => {
      const { page, problems } = await openPage(stack.url);
      await signIn(page, DEMO);
      const asked = [];
      page.on("request", (request) => {
        if (isJobRead(request.url())) asked.push(new URL(request.url()).search);
      });
      const { item } = await submitAndWait(page, "slowly, please");
      assert.equal(await item.getAttribute("data-status"), "succeeded");
      // A service that holds the request answers on each change; one that answers at once with
      // nothing new makes the loop back off from 1 s. Either way a handful of reads, not hundreds.
      assert.ok(asked.length >= 2 && asked.length <= 12, `${asked.length} reads in about 6 s: ${asked}`);
      assert.equal(asked[0], "");
      for (const search of asked.slice(1)) assert.match(search, /^\?wait=20&after=\d+$/);
      assert.deepEqual(await problems(), []);
    });

    test("a service that answers at once with nothing new is asked again after a growing pause", async () => {
      const { page, problems } = await openPage(stack.url);
      await signIn(page, DEMO);
      // As a service without long-polls: the query is dropped, so every answer comes at once.
      const reads = [];
      await page.route(isJobRead, async (route) => {
        const url = new URL(route.request().url());
        const read = { asked: Date.now() };
        reads.push(read);
        const response = await route.fetch({ url: `${url.origin}${url.pathname}` });
        const json = await response.json();
        Object.assign(read, { seq: json.seq, answered: Date.now() });
        await route.fulfill({ response, json });
      });
      const { item } = await submitAndWait(page, "no long-polls here");
      assert.equal(await item.getAttribute("data-status"), "succeeded");
      // After an answer with nothing new the loop waits 1 s, then 1.5, 2.25, 3.4, up to 5 s;
      // after a change it asks at once. A tight loop would ask hundreds of times.
      // Each pause after a quiet answer, with how many quiet answers came just before it.
      const quiet = [];
      let inARow = 0;
      for (let i = 1; i + 1 < reads.length; i += 1) {
        if (reads[i].seq !== reads[i - 1].seq) {
          inARow = 0;
          continue;
        }
        quiet.push({ pause: reads[i + 1].asked - reads[i].answered, inARow });
        inARow += 1;
      }
      assert.ok(reads.length >= 3 && reads.length <= 12, `${reads.length} reads`);
      assert.ok(quiet.length >= 2, `quiet answers: ${JSON.stringify(reads)}`);
      // The model's first word takes 5 s: the first quiet answers come in a row, each pause
      // at least the schedule's (a busy machine only adds to them).
      for (const { pause, inARow: k } of quiet) {
        const least = Math.min(5000, 1000 * 1.5 ** k) - 100;
        assert.ok(pause >= least, `a pause after ${k + 1} quiet answers: ${pause} ms < ${least}`);
      }
      assert.ok(quiet.some(({ inARow }) => inARow >= 1), `quiet answers in a row: ${JSON.stringify(quiet)}`);
      assert.deepEqual(await problems(), []);
    });

    test("Stop cancels a running job, which then shows no output, cost or reservation", async () => {
      const { page, problems } = await openPage(stack.url);
      await signIn(page, DEMO);
      const prompt = "take your time";
      await page.getByLabel("Prompt", { exact: true }).fill(prompt);
      const { id, item } = await submit(page);
      // Read again after the submission: the job holds its worst case while it runs.
      const { reserved } = usageLine(page, "day");
      await textIs(reserved, `(+${worstCase(prompt, 512)} tokens reserved by running jobs)`);
      const stop = item.getByRole("button", { name: "Stop" });
      await stop.waitFor(WAIT);
      await stop.click();
      await statusIs(page, id, "cancelled");
      assert.equal(await stop.isHidden(), true, "no Stop button on a finished job");
      assert.equal(await item.locator('[data-field="output-box"]').isHidden(), true);
      assert.equal(await item.locator('[data-field="usage"]').innerText(), "");
      // Read again after the stop: nothing is held any more.
      await textIs(reserved, "");
      // The model's late answer changes nothing: the job stays cancelled.
      await page.waitForTimeout(6000);
      await page.reload();
      await item.waitFor(WAIT);
      assert.equal(await item.getAttribute("data-status"), "cancelled");
      assert.deepEqual(await problems(), []);
    });
  });

  describe("web UI with a model that writes word by word", IN_TURN, () => {
    let stack;
    before(async () => {
      stack = await startStack(["--words-per-second", "10"]);
    });
    after(async () => {
      await stack?.stop();
    });

    test("the text of a running job grows on screen, then the job shows its usage", async () => {
      const { page, problems } = await openPage(stack.url);
      await signIn(page, DEMO);
      await page.getByLabel("Prompt", { exact: true }).fill("Tell me **slowly** about queues, workers and leases.");
      const { id, item } = await submit(page);
      // What the job shows while running, once its text is longer than `minimum`.
      const running = async (minimum) => {
        const handle = await page.waitForFunction(
          ([jobId, length]) => {
            const job = document.querySelector(`li.job[data-job-id="${jobId}"]`);
            const text = job?.querySelector('[data-field="markdown"]').textContent ?? "";
            if (job?.dataset.status !== "running" || text.length <= length) return false;
            const field = (name) => job.querySelector(`[data-field="${name}"]`);
            return {
              length: text.length,
              title: field("output-title").textContent,
              open: field("output-box").open,
              usage: field("usage").textContent,
            };
          },
          [id, minimum],
          WAIT,
        );
        return handle.jsonValue();
      };
      const first = await running(0);
      assert.deepEqual({ ...first, length: 0 }, { length: 0, title: "Output so far", open: true, usage: "" });
      const later = await running(first.length);
      assert.ok(later.length > first.length, `${first.length} → ${later.length} characters while running`);
      await statusIs(page, id, "succeeded");
      assert.equal(await item.locator("summary").innerText(), "Output");
      assert.match(await rendered(item).innerText(), /You asked: Tell me slowly about queues, workers and leases\.$/);
      assert.equal(await rendered(item).locator("strong").innerText(), "slowly");
      assert.match(await item.locator('[data-field="usage"]').innerText(), /tokens in, \d+ out/);
      assert.deepEqual(await problems(), []);
    });

    test("Stop ends a job mid-answer, which keeps the text written so far", async () => {
      const { page, problems } = await openPage(stack.url);
      await signIn(page, DEMO);
      const prompt = "Write a long answer, slowly, about stopping.";
      await page.getByLabel("Prompt", { exact: true }).fill(prompt);
      const { id, item } = await submit(page);
      await page.waitForFunction(
        (jobId) => {
          const job = document.querySelector(`li.job[data-job-id="${jobId}"]`);
          return job?.dataset.status === "running" && job.querySelector('[data-field="markdown"]').textContent.trim();
        },
        id,
        WAIT,
      );
      await item.getByRole("button", { name: "Stop" }).click();
      await statusIs(page, id, "cancelled");
      const box = item.locator('[data-field="output-box"]');
      assert.equal(await box.isVisible(), true, "the text stays on screen");
      assert.equal(await item.locator('[data-field="output-title"]').innerText(), "Output before it was stopped");
      const kept = (await rendered(item).innerText()).trim();
      const whole = `This answer comes from the offline model standing in for`;
      assert.ok(kept && (whole.startsWith(kept) || kept.startsWith(whole)), `kept: ${kept}`);
      assert.ok(!kept.endsWith(prompt), `the answer was cut short: ${kept}`);
      // Nothing more is written, and a reload (the list carries no text) shows the same.
      await page.waitForTimeout(1500);
      assert.equal((await rendered(item).innerText()).trim(), kept);
      await page.reload();
      await item.getByText("Output before it was stopped").click();
      await page.waitForFunction(
        ([jobId, text]) =>
          document.querySelector(`li.job[data-job-id="${jobId}"] [data-field="markdown"]`)?.innerText.trim() === text,
        [id, kept],
        WAIT,
      );
      assert.deepEqual(await problems(), []);
    });
  });

  describe("web UI with a daily token budget that fits one job", IN_TURN, () => {
    const first = "The first job fits in today's budget.";
    // The form's default max_tokens (asserted below): the budget is exactly one job's worst case.
    const budget = worstCase(first, 512);
    let stack;
    before(async () => {
      stack = await startStack([], { env: { BUDGET_TOKENS_PER_DAY: String(budget), BUDGET_USD_PER_MONTH: "5" } });
    });
    after(async () => {
      await stack?.stop();
    });

    test("the usage panel counts a job against the budget; the next is refused in the service's words", async () => {
      const { page, problems } = await openPage(stack.url);
      const reads = countUsageReads(page);
      await signIn(page, DEMO);
      assert.equal(await page.getByLabel("Max tokens").inputValue(), "512", "the budget assumes the form's default");
      const day = usageLine(page, "day");
      const month = usageLine(page, "month");
      await textIs(day.used, `0 of ${budget} tokens today`);
      assert.equal(await month.used.innerText(), "$0 of $5.00 this month");
      assert.equal(await day.meter.getAttribute("aria-label"), "Tokens today");
      assert.equal(await day.meter.getAttribute("aria-valuemin"), "0");
      assert.equal(await day.meter.getAttribute("aria-valuemax"), String(budget));
      assert.equal(await day.meter.getAttribute("aria-valuenow"), "0");
      assert.equal(await month.meter.getAttribute("aria-valuemax"), "5");
      const resets = "resets in (\\d+ h|\\d+ min|less than a minute)";
      assert.match(await day.note.innerText(), new RegExp(`^${budget} tokens left · ${resets}$`));
      assert.match(await month.note.innerText(), /^\$5\.00 left · resets in \d+ (days|h|min)$/);
      assert.equal(await day.reserved.innerText(), "");

      const { item } = await submitAndWait(page, first);
      assert.equal(await item.getAttribute("data-status"), "succeeded");
      const used = await jobUsage(item);
      // Read again once the job ended: what it used counts, its reservation is gone.
      await textIs(day.used, `${used.tokens} of ${budget} tokens today`);
      await textIs(month.used, `${used.cost} of $5.00 this month`);
      assert.equal(await day.reserved.innerText(), "");
      assert.equal(await day.meter.getAttribute("aria-valuenow"), String(used.tokens));
      assert.equal(
        await day.meter.getAttribute("aria-valuetext"),
        `${used.tokens} used of ${budget} tokens; ${budget - used.tokens} tokens left`,
      );
      assert.match(await day.note.innerText(), new RegExp(`^${budget - used.tokens} tokens left · ${resets}$`));
      const fill = await day.meter.locator(".meter-used").evaluate((bar) => bar.getBoundingClientRect().width / bar.parentElement.getBoundingClientRect().width);
      assert.ok(fill > 0 && fill < 0.5, `the meter is filled ${fill}`);

      // A second job of the same size no longer fits.
      const jobs = page.locator("li.job");
      const listed = await jobs.count();
      const readsBefore = reads.length;
      const second = "A second, same-size job goes over it.";
      assert.equal(worstCase(second, 512), budget);
      const promptBox = page.getByLabel("Prompt", { exact: true });
      await promptBox.fill(second);
      const answer = page.waitForResponse((r) => r.url().endsWith("/generate"));
      await page.getByRole("button", { name: "Submit" }).click();
      const response = await answer;
      assert.equal(response.status(), 429);
      assert.ok(Number(response.headers()["retry-after"]) > 0, "Retry-After: seconds to midnight UTC");
      const { error } = await response.json();
      assert.equal(error.code, "budget_exceeded");
      assert.match(error.message, new RegExp(`more than is left of your daily budget of ${budget} tokens`));
      const refusal = page.getByRole("alert").filter({ hasText: "daily budget" });
      await refusal.waitFor(WAIT);
      assert.equal(await refusal.innerText(), error.message, "the service's own sentence");
      assert.equal(await page.locator("#notice").isHidden(), true, "not a generic error");
      const [button, message] = [await page.getByRole("button", { name: "Submit" }).boundingBox(), await refusal.boundingBox()];
      assert.ok(message.y >= button.y + button.height && message.y - (button.y + button.height) < 40, "next to Submit");
      assert.equal(await promptBox.inputValue(), second, "the prompt is kept");
      await page.waitForTimeout(300);
      assert.equal(await jobs.count(), listed, "no job was added");
      // The panel was read again after the refusal, and only a few times in all.
      for (let tries = 0; reads.length === readsBefore && tries < 50; tries += 1) await page.waitForTimeout(100);
      assert.ok(reads.length > readsBefore, "usage read again after the refusal");
      assert.ok(reads.length <= 5, `${reads.length} reads of /usage`);
      await textIs(day.used, `${used.tokens} of ${budget} tokens today`);

      // Dark mode: the meter stands out from its track, the text is light.
      await page.emulateMedia({ colorScheme: "dark" });
      const colours = await day.meter.evaluate((meter) => ({
        track: getComputedStyle(meter).backgroundColor,
        fill: getComputedStyle(meter.querySelector(".meter-used")).backgroundColor,
        text: getComputedStyle(meter.closest("section")).color,
      }));
      assert.notEqual(colours.fill, colours.track, JSON.stringify(colours));
      assert.ok(colours.text.match(/\d+/g).slice(0, 3).every((n) => Number(n) > 180), colours.text);
      await page.screenshot({ path: path.join(screenshots, "budget-exceeded.png"), fullPage: true });
      assert.deepEqual(await problems(), []);
    });
  });

  describe("web UI without budgets", IN_TURN, () => {
    let stack;
    before(async () => {
      stack = await startStack([], { env: { BUDGET_TOKENS_PER_DAY: undefined, BUDGET_USD_PER_MONTH: undefined } });
    });
    after(async () => {
      await stack?.stop();
    });

    test("the usage panel shows use without a limit, and a finished job's tokens in it", async () => {
      const { page, problems } = await openPage(stack.url);
      const reads = countUsageReads(page);
      await signIn(page, DEMO);
      const day = usageLine(page, "day");
      const month = usageLine(page, "month");
      await textIs(day.used, "0 tokens today");
      assert.equal(await month.used.innerText(), "$0 this month");
      assert.equal(await page.getByRole("meter").count(), 0, "no meter without a budget");
      assert.equal(await day.note.isHidden(), true);
      assert.equal(await month.note.isHidden(), true);

      const { item } = await submitAndWait(page, "How many tokens is this?");
      assert.equal(await item.getAttribute("data-status"), "succeeded");
      const used = await jobUsage(item);
      await textIs(day.used, `${used.tokens} tokens today`);
      await textIs(month.used, `${used.cost} this month`);
      assert.equal(await day.reserved.innerText(), "");
      // Read on sign-in, after the submission and when the job ended; not on a timer.
      await page.waitForTimeout(1500);
      assert.ok(reads.length >= 2 && reads.length <= 4, `${reads.length} reads of /usage`);
      assert.deepEqual(await problems(), []);
    });
  });

  describe("web UI across a restart of the local stack", IN_TURN, () => {
    let stack;
    after(async () => {
      await stack?.stop();
    });

    test("pages from before the restart say so in a sentence, and signing in again works", async () => {
      stack = await startStack();
      const { port } = stack;
      const signedIn = await openPage(stack.url);
      await signIn(signedIn.page, DEMO);
      const toReload = await openPage(stack.url);
      await signIn(toReload.page, DEMO);
      const signedOut = await openPage(stack.url);
      await signedOut.page.getByRole("heading", { name: "Sign in" }).waitFor(WAIT);
      const oldConfig = await (await fetch(`${stack.url}/config.json`)).json();

      // A new stack on the same port: new user pool, new app client, the demo user anew.
      await stack.stop();
      stack = await startStack([], { port });
      const newConfig = await (await fetch(`${stack.url}/config.json`)).json();
      assert.notEqual(newConfig.userPoolClientId, oldConfig.userPoolClientId);

      const notice = (page) => page.locator("#notice");
      // Signed in: the next call finds its token refused, and the page finds out why.
      await signedIn.page.getByRole("button", { name: "Refresh" }).click();
      await signedIn.page.getByRole("heading", { name: "Sign in" }).waitFor(WAIT);
      assert.equal(await notice(signedIn.page).innerText(), RESTARTED);
      await signIn(signedIn.page, DEMO);

      // Reloaded: the stored session belongs to the old app client.
      await toReload.page.reload();
      await toReload.page.getByRole("heading", { name: "Sign in" }).waitFor(WAIT);
      await notice(toReload.page).filter({ hasText: RESTARTED }).waitFor(WAIT);
      await signIn(toReload.page, DEMO);

      // Signed out, on the old sign-in form: Cognito answers with the bare client id.
      const form = signedOut.page.locator("#sign-in-form");
      await form.getByLabel("E-mail").fill(DEMO.email);
      await form.getByLabel("Password").fill(DEMO.password);
      await form.getByRole("button", { name: "Sign in" }).click();
      await notice(signedOut.page).filter({ hasText: RESTARTED }).waitFor(WAIT);
      assert.doesNotMatch(await notice(signedOut.page).innerText(), new RegExp(oldConfig.userPoolClientId));
      await signedOut.page.screenshot({ path: path.join(screenshots, "restarted.png") });
      await form.getByRole("button", { name: "Sign in" }).click();
      await signedOut.page.getByRole("heading", { name: "New job" }).waitFor(WAIT);

      for (const { problems } of [signedIn, toReload, signedOut]) assert.deepEqual(await problems(), []);
    });
  });
});
