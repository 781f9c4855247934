// The web UI's live text over the Event API's WebSocket (AWS AppSync Events, emulated by the
// local stack's gateway at /event/realtime), in a real headless Chromium: a running job's
// text comes over the socket as the worker publishes it (at most every LIVE_PUBLISH_MS, 200
// ms by default) while the long-polls bring its state; a dropped socket is reopened
// and the text resumes with every character once; nobody but the owner may subscribe to a
// job; a cancelled job shows it at once; and without a socket the long-polls bring the text
// as before.
//
// The offline model writes 10 words a second here, so an answer takes about 5 s while the
// worker flushes its text to the job every 2 s: text that grows in many small steps between
// two flushes can only have come over the socket. The prompts carry characters of 2, 3 and 4
// UTF-8 bytes, since the events' offsets count bytes.

import { after, afterEach, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { DEMO, launchChromium, signIn, startStack } from "./local-stack.mjs";

const WAIT = { timeout: 30_000 };
const REALTIME = /\/event\/realtime$/;
const TERMINAL = ["succeeded", "failed", "cancelled"];
/// About 65 words of answer with the offline model's own 19: 5 s (the longest it takes) at 10
/// words a second. Characters of 2, 3 and 4 UTF-8 bytes come early, so that most of the text
/// follows them.
const PROMPT =
  "Café, naïve 列 队 🚀 — tell me slowly, word by word, about queues and their workers, how " +
  "leases expire, how retries back off, and why a flush every two seconds is not live enough " +
  "for a reader who wants every word as soon as it is written.";

const isJobRead = (url) => /\/jobs\/[0-9a-f-]{36}$/.test(new URL(url).pathname);

let browser;
let stack;
/// The contexts of the pages a test opened, closed after it.
const opened = [];

before(async () => {
  browser = await launchChromium();
  stack = await startStack(["--words-per-second", "10"]);
});

after(async () => {
  await browser?.close();
  await stack?.stop();
});

afterEach(async () => {
  for (const context of opened.splice(0)) await context.close();
});

/// A signed-in page that records script errors, dialogs, CSP violations (`problems()`), the
/// live events each socket it opens receives (`sockets`), and every text each job shows in
/// its raw view, with its status and time (`samples(id)`). `setUp(page)` runs before the page
/// loads (routes). Closed after the test, unless `keep`.
async function openPage({ setUp, keep = false } = {}) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 900 } });
  if (!keep) opened.push(context);
  const page = await context.newPage();
  const seen = [];
  page.on("pageerror", (error) => seen.push(`page error: ${error.message}`));
  page.on("dialog", (dialog) => {
    seen.push(`dialog: ${dialog.message()}`);
    dialog.dismiss();
  });
  const sockets = [];
  page.on("websocket", (socket) => {
    const record = { url: socket.url(), received: [], closed: false };
    sockets.push(record);
    socket.on("framereceived", ({ payload }) => {
      try {
        record.received.push({ ...JSON.parse(payload), receivedAt: Date.now() });
      } catch {
        record.received.push({ type: "unreadable", payload });
      }
    });
    socket.on("close", () => {
      record.closed = true;
    });
  });
  await page.addInitScript(() => {
    window.__violations = [];
    document.addEventListener("securitypolicyviolation", (event) => {
      window.__violations.push(`${event.violatedDirective} blocked ${event.blockedURI || "inline"}`);
    });
    // Each change of a job's raw text or status, as it happens.
    window.__samples = {};
    const sample = () => {
      for (const item of document.querySelectorAll("li.job")) {
        const id = item.dataset.jobId;
        const text = item.querySelector('[data-field="output"]').textContent;
        const status = item.dataset.status;
        const list = (window.__samples[id] ??= []);
        const last = list.at(-1);
        if (!last || last.text !== text || last.status !== status) list.push({ at: Date.now(), status, text });
      }
    };
    document.addEventListener("DOMContentLoaded", () => {
      new MutationObserver(sample).observe(document.body, {
        subtree: true,
        childList: true,
        characterData: true,
        attributes: true,
        attributeFilter: ["data-status"],
      });
    });
  });
  await setUp?.(page);
  await page.goto(stack.url);
  await signIn(page, DEMO);
  const problems = async () => [
    ...seen,
    ...(await page.evaluate(() => window.__violations ?? []).catch(() => [])).map((v) => `CSP: ${v}`),
  ];
  const samples = (id) => page.evaluate((jobId) => window.__samples[jobId] ?? [], id);
  const token = () => page.evaluate(() => JSON.parse(sessionStorage.getItem("bedrock-jobs.session")).accessToken);
  return { page, problems, sockets, samples, token };
}

/// The text events for job `id` that the page's sockets received.
function eventsOf(sockets, id) {
  return sockets.flatMap((socket) =>
    socket.received
      .filter((message) => message.type === "data")
      .map((message) => ({ ...JSON.parse(message.event), receivedAt: message.receivedAt }))
      .filter((event) => event.job_id === id),
  );
}

/// Submits `prompt`; resolves to the new job's id and list item.
async function submit(page, prompt = PROMPT) {
  await page.getByLabel("Prompt", { exact: true }).fill(prompt);
  const answer = page.waitForResponse((r) => r.url().endsWith("/generate"));
  await page.getByRole("button", { name: "Submit" }).click();
  const { job_id: id } = await (await answer).json();
  return { id, item: page.locator(`li.job[data-job-id="${id}"]`) };
}

function statusIn(page, id, statuses, timeout = WAIT.timeout) {
  return page.waitForFunction(
    ([jobId, wanted]) => wanted.includes(document.querySelector(`li.job[data-job-id="${jobId}"]`)?.dataset.status),
    [id, statuses],
    { timeout },
  );
}

/// Waits until `check()` is true (polled every 25 ms).
async function until(check, what, timeout = WAIT.timeout) {
  const deadline = Date.now() + timeout;
  while (!(await check())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/// The job as the API has it, read around the page.
async function readJob(id, token) {
  const response = await fetch(`${stack.url}/jobs/${id}`, { headers: { Authorization: `Bearer ${token}` } });
  assert.equal(response.status, 200);
  return response.json();
}

/// Every text the job showed, each a prefix of `whole` (no character twice, none lost, at any
/// moment), never shorter than the one before while the job ran (an older long-poll answer
/// never cuts newer text); and the last one `whole` itself.
function assertPrefixes(samples, whole) {
  assert.ok(samples.length > 0, "the job showed some text");
  let before = "";
  for (const { text, status } of samples) {
    assert.ok(whole.startsWith(text), `shown while ${status}, not a prefix of the answer:\n${JSON.stringify(text)}\n${JSON.stringify(whole)}`);
    if (status === "running") {
      assert.ok(text.length >= before.length, `the text shrank while running:\n${JSON.stringify(before)}\n${JSON.stringify(text)}`);
      before = text;
    }
  }
  assert.equal(samples.at(-1).text, whole);
}

const running = (samples) => samples.filter((sample) => sample.status === "running");
const distinctTexts = (samples) => new Set(samples.map((sample) => sample.text).filter(Boolean)).size;
const bytes = (text) => Buffer.byteLength(text);

describe("live text over the Event API's WebSocket", { concurrency: false }, () => {
  test("a running job's text comes over the socket as it is written, in steps far smaller than a flush", async (t) => {
    // The long-polls still bring the job's state, but never its text while it runs: any text
    // shown before the end came over the socket.
    const { page, problems, sockets, samples, token } = await openPage({
      setUp: (page) =>
        page.route(isJobRead, async (route) => {
          const response = await route.fetch();
          const job = await response.json();
          if (job.status === "running") delete job.output;
          await route.fulfill({ response, json: job });
        }),
    });
    const { id, item } = await submit(page);
    await statusIn(page, id, TERMINAL);
    assert.equal(await item.getAttribute("data-status"), "succeeded");
    const { output } = await readJob(id, await token());
    const shown = await samples(id);
    assertPrefixes(shown, output);
    assert.equal(await item.locator("pre.output").textContent(), output);

    const events = eventsOf(sockets, id);
    const live = running(shown);
    // 10 words a second for about 5 s, published every 200 ms: some 25 events; from the
    // long-polls, a flush every 2 s would make two or three steps at most.
    assert.ok(events.length >= 10, `${events.length} live events`);
    assert.ok(distinctTexts(live) >= 10, `${distinctTexts(live)} texts shown while running`);
    const steps = live.slice(1).map((sample, i) => bytes(sample.text) - bytes(live[i].text)).filter((step) => step > 0);
    const median = steps.sort((a, b) => a - b)[Math.floor(steps.length / 2)];
    assert.ok(median <= 24, `the text grows a word or two at a time, not a flush at a time: median step ${median} bytes`);
    const intervals = events.slice(1).map((event, i) => event.receivedAt - events[i].receivedAt).sort((a, b) => a - b);
    t.diagnostic(
      `${events.length} events, ${intervals[Math.floor(intervals.length / 2)]} ms apart (median), ` +
        `${distinctTexts(live)} texts shown while running, median step ${median} bytes`,
    );
    // Each event is the answer's text from its offset in UTF-8 bytes, and some come after
    // characters of several bytes (where bytes and UTF-16 units differ).
    const encoded = Buffer.from(output);
    for (const { offset, text } of events) {
      assert.equal(encoded.subarray(offset, offset + bytes(text)).toString(), text, `the event at ${offset}`);
    }
    assert.ok(events.some(({ offset }) => encoded.subarray(0, offset).toString().length !== offset));
    // ... and the text grows live past them, as much as before them.
    const past = live.filter((sample) => sample.text.includes("🚀"));
    assert.ok(distinctTexts(past) >= 5, `${distinctTexts(past)} texts shown while running past the rocket`);
    assert.equal(await item.locator('[data-field="output-title"]').innerText(), "Output");
    assert.match(await item.locator('[data-field="usage"]').innerText(), /^\d+ tokens in, \d+ out, cost \$/);
    assert.deepEqual(await problems(), []);
  });

  test("a socket dropped mid-answer is reopened, and the text resumes with every character once", async (t) => {
    // The page's socket goes through this route to the stack's, so that the test can cut it.
    const connections = [];
    const { page, problems, samples, token } = await openPage({
      setUp: (page) =>
        page.routeWebSocket(REALTIME, (ws) => {
          const connection = { ws, events: [], opened: Date.now() };
          connections.push(connection);
          const server = ws.connectToServer();
          ws.onMessage((message) => server.send(message));
          server.onMessage((message) => {
            const parsed = JSON.parse(message);
            if (parsed.type === "data") connection.events.push(JSON.parse(parsed.event));
            ws.send(message);
          });
        }),
    });
    // The long-poll answers that bring new text: each follows a flush of the job (every 2 s).
    const flushes = [];
    page.on("response", async (response) => {
      if (!isJobRead(response.url()) || !new URL(response.url()).search) return;
      const job = await response.json().catch(() => ({}));
      if (job.status === "running" && job.output) flushes.push(Date.now());
    });
    const reads = [];
    page.on("request", (request) => {
      if (isJobRead(request.url())) reads.push({ at: Date.now(), search: new URL(request.url()).search });
    });
    const { id, item } = await submit(page);
    // Cut just after a flush, once text comes over the socket: the job's own text (what the
    // page reads when it subscribes again) then stays behind what the page has until the next
    // flush, 2 s later, while the socket, reopened within a second, brings what follows the
    // text published meanwhile: a gap.
    await until(() => connections[0]?.events.length >= 3, "text over the first socket");
    const flushed = flushes.length;
    await until(() => flushes.length > flushed, "a flush");
    await connections[0].ws.close({ code: 4000, reason: "cut by the test" });
    const cut = Date.now();
    const last = connections[0].events.at(-1);
    const held = last.offset + bytes(last.text);
    await until(() => connections[1]?.events.length >= 1, "text over a second socket");
    const reopenedAfter = connections[1].opened - cut;
    assert.ok(reopenedAfter < 5000, `reopened ${reopenedAfter} ms after the drop`);
    const resumedAt = connections[1].events[0].offset;
    assert.ok(resumedAt > held, `text was missed while the socket was down: ${held} bytes held, the next event at ${resumedAt}`);
    await statusIn(page, id, TERMINAL);
    assert.equal(await item.getAttribute("data-status"), "succeeded");
    const { output } = await readJob(id, await token());
    const shown = await samples(id);
    assertPrefixes(shown, output);
    // It went on growing while running after the drop, past the gap.
    const after = running(shown).filter((sample) => sample.at > connections[1].opened);
    assert.ok(after.some((sample) => bytes(sample.text) > resumedAt), "the text grew past the gap while running");
    assert.equal(connections.length, 2, "one socket at a time, reopened once");
    // Subscribed again, the page read the job once (then once more a moment later, the gap
    // still open), besides its long-polls.
    const reread = reads.filter((read) => read.at > connections[1].opened && !read.search).length;
    assert.ok(reread >= 1 && reread <= 3, `${reread} reads of the job after the socket was reopened`);
    t.diagnostic(
      `reopened ${reopenedAfter} ms after the drop; ${held} bytes held, next event at ${resumedAt}; ` +
        `${connections.map((c) => c.events.length).join(" and ")} events; ${reread} reads after it`,
    );
    assert.deepEqual(await problems(), []);
  });

  describe("nobody but a job's owner may subscribe to it", { concurrency: false }, () => {
    /// A new user, signed up and signed in through the stack's Cognito, around the page.
    async function newUser() {
      const config = await (await fetch(`${stack.url}/config.json`)).json();
      const cognito = async (action, body) => {
        const response = await fetch(config.cognitoEndpoint, {
          method: "POST",
          headers: {
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": `AWSCognitoIdentityProviderService.${action}`,
          },
          body: JSON.stringify(body),
        });
        const data = await response.json();
        assert.equal(response.status, 200, JSON.stringify(data));
        return data;
      };
      const email = `someone-else-${Date.now()}@example.com`;
      const password = "Another-Password-2026!";
      const client = { ClientId: config.userPoolClientId };
      await cognito("SignUp", { ...client, Username: email, Password: password, UserAttributes: [{ Name: "email", Value: email }] });
      await cognito("ConfirmSignUp", { ...client, Username: email, ConfirmationCode: "123456" });
      const signedIn = await cognito("InitiateAuth", {
        ...client,
        AuthFlow: "USER_PASSWORD_AUTH",
        AuthParameters: { USERNAME: email, PASSWORD: password },
      });
      return signedIn.AuthenticationResult.AccessToken;
    }

    const claims = (token) => JSON.parse(Buffer.from(token.split(".")[1], "base64url"));
    const withPayload = (token, change) => {
      const [header, , signature] = token.split(".");
      const payload = Buffer.from(JSON.stringify(change(claims(token)))).toString("base64url");
      return `${header}.${payload}.${signature}`;
    };

    /// Opens a socket from the page with `token` (the protocol's connection authorization),
    /// and once it is acknowledged subscribes to each `{channel, token}`. Resolves to what the
    /// server said, once every subscription is answered or the socket closed.
    function rawSocket(page, token, subscriptions = []) {
      return page.evaluate(
        async ({ token, subscriptions }) => {
          const config = await (await fetch("config.json")).json();
          const host = new URL(config.events.http).host;
          const encode = (value) =>
            btoa(JSON.stringify(value)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
          const socket = new WebSocket(config.events.realtime, [
            "aws-appsync-event-ws",
            `header-${encode({ host, Authorization: token })}`,
          ]);
          const messages = [];
          let closed = null;
          await new Promise((resolve) => {
            const timer = setTimeout(resolve, 10_000);
            socket.onopen = () => socket.send(JSON.stringify({ type: "connection_init" }));
            socket.onclose = (event) => {
              closed = event.code;
              clearTimeout(timer);
              resolve();
            };
            socket.onmessage = (event) => {
              const message = JSON.parse(event.data);
              messages.push(message);
              if (message.type === "connection_ack") {
                if (!subscriptions.length) resolve();
                subscriptions.forEach(({ channel, token: own }, index) =>
                  socket.send(
                    JSON.stringify({
                      type: "subscribe",
                      id: `s${index}`,
                      channel,
                      authorization: { Authorization: own, host },
                    }),
                  ),
                );
              }
              const answered = messages.filter((m) => /^subscribe_(success|error)$/.test(m.type)).length;
              if (subscriptions.length && answered === subscriptions.length) resolve();
            };
          });
          socket.close();
          return { messages, closed };
        },
        { token, subscriptions },
      );
    }

    const answerTo = (result, id) => result.messages.find((m) => m.id === id && m.type.startsWith("subscribe_"));

    let owner;
    let mine;
    let theirs;
    let job;
    before(async () => {
      owner = await openPage({ keep: true });
      mine = await owner.token();
      theirs = await newUser();
      ({ id: job } = await submit(owner.page, "a job of my own"));
    });
    after(async () => {
      await owner?.page.context().close();
    });

    test("another user's subscription to my job's channel is refused", async () => {
      const channel = `/jobs/${claims(mine).sub}/${job}`;
      assert.notEqual(claims(theirs).sub, claims(mine).sub);
      // Mine, on my own socket: allowed (the test can tell).
      const own = await rawSocket(owner.page, mine, [{ channel, token: mine }]);
      assert.equal(answerTo(own, "s0")?.type, "subscribe_success", JSON.stringify(own.messages));
      // Theirs: their socket is accepted, their subscriptions to my job and to all my jobs not.
      const other = await rawSocket(owner.page, theirs, [
        { channel, token: theirs },
        { channel: `/jobs/${claims(mine).sub}/*`, token: theirs },
      ]);
      assert.equal(other.messages[0].type, "connection_ack");
      for (const id of ["s0", "s1"]) {
        const answer = answerTo(other, id);
        assert.equal(answer?.type, "subscribe_error", JSON.stringify(other.messages));
        assert.equal(answer.errors[0].errorType, "UnauthorizedException");
      }
      assert.deepEqual(await owner.problems(), []);
    });

    test("a forged token is refused, at connection and at subscription", async () => {
      const channel = `/jobs/${claims(mine).sub}/${job}`;
      // Their token, its payload made to say my sub (their signature kept); my token with
      // another signature.
      const forged = withPayload(theirs, (payload) => ({ ...payload, sub: claims(mine).sub }));
      const [header, payload, signature] = mine.split(".");
      const flipped = `${header}.${payload}.${signature.slice(0, -4)}${signature.slice(-4) === "AAAA" ? "BBBB" : "AAAA"}`;
      for (const token of [forged, flipped]) {
        const refused = await rawSocket(owner.page, token, [{ channel, token }]);
        assert.equal(refused.messages[0]?.type, "connection_error", JSON.stringify(refused.messages));
        assert.equal(refused.messages[0].errors[0].errorType, "UnauthorizedException");
        assert.ok(!refused.messages.some((m) => m.type === "connection_ack" || m.type === "subscribe_success"));
        assert.notEqual(refused.closed, null, "the socket is closed");
        // On a socket opened with a valid token, the forged one does not subscribe either.
        const onMine = await rawSocket(owner.page, mine, [{ channel, token }]);
        assert.equal(answerTo(onMine, "s0")?.type, "subscribe_error", JSON.stringify(onMine.messages));
        assert.equal(answerTo(onMine, "s0").errors[0].errorType, "UnauthorizedException");
      }
      assert.deepEqual(await owner.problems(), []);
    });

    test("an expired token is refused", { skip: "the local stack cannot expire a token: moto issues access tokens valid for an hour, the stack has no clock to move, and a token whose exp is in the past would have to be signed again with the pool's key" }, () => {});
  });

  test("a job cancelled mid-answer shows it at once, and keeps its text as the service has it", async () => {
    const { page, problems, sockets, samples, token } = await openPage();
    const { id, item } = await submit(page);
    await until(() => eventsOf(sockets, id).length >= 5, "live text");
    await until(async () => running(await samples(id)).some((sample) => sample.text), "text on screen");
    // Stopped elsewhere (another tab, the API): the page learns it from its long-poll, which
    // goes on beside the socket.
    const response = await fetch(`${stack.url}/jobs/${id}/cancel`, {
      method: "POST",
      headers: { Authorization: `Bearer ${await token()}` },
    });
    assert.equal(response.status, 200);
    const cancelledAt = Date.now();
    await statusIn(page, id, TERMINAL);
    const shownAfter = Date.now() - cancelledAt;
    assert.equal(await item.getAttribute("data-status"), "cancelled");
    assert.ok(shownAfter < 3000, `shown ${shownAfter} ms after the cancellation`);
    assert.equal(await item.getByRole("button", { name: "Stop" }).isHidden(), true);
    assert.equal(await item.locator('[data-field="output-title"]').innerText(), "Output before it was stopped");
    const { output, status } = await readJob(id, await token());
    assert.equal(status, "cancelled");
    assert.ok(output, "the job kept some text");
    assert.equal(await item.locator("pre.output").textContent(), output);
    // The worker publishes until it finds out, at its next flush: the page has unsubscribed
    // (what was on its way may still come), and shows none of it.
    await page.waitForTimeout(300);
    const eventsThen = eventsOf(sockets, id).length;
    await page.waitForTimeout(2200);
    assert.equal(await item.locator("pre.output").textContent(), output);
    assert.equal(await item.getAttribute("data-status"), "cancelled");
    assert.equal(eventsOf(sockets, id).length, eventsThen, "unsubscribed once the job ended");
    assert.equal((await samples(id)).at(-1).text, output);
    assert.deepEqual(await problems(), []);
  });

  describe("without a socket, the long-polls bring the text", { concurrency: false }, () => {
    /// Runs a job on the page and checks that its text grew while running and ended whole,
    /// with nothing said to the user.
    async function textByLongPolls({ page, problems, samples, token }) {
      const { id, item } = await submit(page);
      await statusIn(page, id, TERMINAL);
      assert.equal(await item.getAttribute("data-status"), "succeeded");
      const { output } = await readJob(id, await token());
      const shown = await samples(id);
      assertPrefixes(shown, output);
      assert.ok(distinctTexts(running(shown)) >= 1, "text was shown while the job ran");
      assert.equal(await page.locator("#notice").isHidden(), true, "no message for the user");
      assert.deepEqual(await problems(), []);
      return { id, shown };
    }

    test("config.json without events: no socket at all", async () => {
      const tab = await openPage({
        setUp: (page) =>
          page.route("**/config.json", async (route) => {
            const response = await route.fetch();
            const { events, ...config } = await response.json();
            assert.ok(events, "the stack's config.json names the Event API");
            await route.fulfill({ response, json: config });
          }),
      });
      const { id } = await textByLongPolls(tab);
      assert.equal(tab.sockets.length, 0);
      assert.equal(eventsOf(tab.sockets, id).length, 0);
    });

    test("a socket the Event API refuses: the page tries again a few times, quietly", async () => {
      // The authorization names another host than the one connected to: the stack refuses
      // the connection, as AppSync does, with connection_error.
      const tab = await openPage({
        setUp: (page) =>
          page.route("**/config.json", async (route) => {
            const response = await route.fetch();
            const config = await response.json();
            config.events.http = config.events.http.replace("127.0.0.1", "localhost");
            await route.fulfill({ response, json: config });
          }),
      });
      await textByLongPolls(tab);
      const { sockets } = tab;
      assert.ok(sockets.length >= 1 && sockets.length <= 5, `${sockets.length} sockets in about 6 s`);
      for (const socket of sockets) {
        assert.deepEqual(socket.received.map((m) => m.type), ["connection_error"]);
      }
    });

    test("a socket that is never acknowledged counts as failed within a few seconds", async () => {
      const routed = [];
      const tab = await openPage({
        setUp: (page) =>
          page.routeWebSocket(REALTIME, (ws) => {
            // Opens, and says nothing, ever.
            const socket = { opened: Date.now(), closed: null, asked: [] };
            routed.push(socket);
            ws.onMessage((message) => socket.asked.push(JSON.parse(message).type));
            ws.onClose(() => {
              socket.closed = Date.now();
            });
          }),
      });
      await textByLongPolls(tab);
      await until(() => routed[0]?.closed, "the page closing the silent socket", 10_000);
      const waited = routed[0].closed - routed[0].opened;
      assert.deepEqual(routed[0].asked, ["connection_init"]);
      assert.ok(waited >= 3000 && waited <= 8000, `closed ${waited} ms after it opened`);
    });
  });

  test("a running job shown after a reload is followed over the socket again", async (t) => {
    // After the reload the list shows the job running: the page subscribes to it again. The
    // job is watched already, so its events go on from where its worker is, past the text the
    // page reads: a gap, filled from the job's own text at its next flush.
    const { page, problems, sockets, samples, token } = await openPage();
    const reads = [];
    page.on("request", (request) => {
      if (isJobRead(request.url()) && !new URL(request.url()).search) reads.push(request.url());
    });
    const { id, item } = await submit(page);
    await until(() => eventsOf(sockets, id).length >= 3, "live text before the reload");
    const before = sockets.length;
    await page.reload();
    await item.waitFor(WAIT);
    await statusIn(page, id, TERMINAL);
    assert.equal(await item.getAttribute("data-status"), "succeeded");
    const { output } = await readJob(id, await token());
    const shown = await samples(id);
    assertPrefixes(shown, output);
    const after = sockets.slice(before);
    assert.equal(after.length, 1, "one socket after the reload");
    assert.ok(eventsOf(after, id).length >= 3, `events after the reload: ${eventsOf(after, id).length}`);
    assert.ok(distinctTexts(running(shown)) >= 5, `${distinctTexts(running(shown))} texts shown while running after the reload`);
    const plainReads = reads.filter((url) => url.endsWith(id)).length;
    t.diagnostic(`after the reload: ${eventsOf(after, id).length} events, the first at byte ${eventsOf(after, id)[0].offset}; ${plainReads} reads of the job besides long-polls`);
    assert.deepEqual(await problems(), []);
  });

  test("the splice rules: offsets in UTF-8 bytes, overlaps skipped, gaps waited out, attempts", async () => {
    const { page, problems } = await openPage();
    const results = await page.evaluate(async () => {
      const { spliceText } = await import(new URL("app.js", location.href).href);
      const piece = (attempt, offset, text) => ({ attempt, offset, text });
      const run = (pieces, held) => {
        const steps = [];
        for (const next of pieces) {
          const result = spliceText(held, next);
          held = result.held;
          steps.push({ text: held.text, bytes: held.bytes, attempt: held.attempt, gap: result.gap });
        }
        return steps;
      };
      return {
        // "é" is 2 bytes, "列" 3, "🚀" 4 (and two UTF-16 units).
        appends: run([piece(1, 0, "café "), piece(1, 6, "列 "), piece(1, 10, "🚀!")]),
        overlaps: run([piece(1, 0, "naïve qu"), piece(1, 4, "ve queues"), piece(1, 0, "naïve"), piece(1, 12, "s!")]),
        gap: run([piece(1, 0, "a "), piece(1, 9, "e"), piece(1, 7, "d "), piece(1, 0, "a b"), piece(1, 0, "a bc列")]),
        attempts: run([piece(2, 0, "second"), piece(1, 6, " stale"), piece(3, 0, "third")]),
        lateStart: run([piece(1, 3, "def")]),
        misaligned: run([piece(1, 0, "列"), piece(1, 1, "列列")]),
        unchanged: (() => {
          const held = spliceText(undefined, piece(1, 0, "abc")).held;
          const copy = JSON.stringify(held);
          spliceText(held, piece(1, 3, "def"));
          spliceText(held, piece(2, 0, "new"));
          return JSON.stringify(held) === copy;
        })(),
      };
    });
    const texts = (steps) => steps.map((step) => [step.text, step.gap]);
    assert.deepEqual(texts(results.appends), [["café ", false], ["café 列 ", false], ["café 列 🚀!", false]]);
    assert.deepEqual(results.appends.map((step) => step.bytes), [6, 10, 15]);
    assert.deepEqual(texts(results.overlaps), [
      ["naïve qu", false],
      ["naïve queues", false],
      ["naïve queues", false],
      ["naïve queues!", false],
    ]);
    // Held "a " (2 bytes): the pieces at bytes 9 and 7 (past "列", 3 bytes) wait; "a b" does not
    // reach them; "a bc列" does, and the waiting pieces follow it, in order.
    assert.deepEqual(texts(results.gap), [
      ["a ", false],
      ["a ", true],
      ["a ", true],
      ["a b", true],
      ["a bc列d e", false],
    ]);
    assert.deepEqual(
      results.attempts.map((step) => [step.attempt, step.text]),
      [[2, "second"], [2, "second"], [3, "third"]],
    );
    assert.deepEqual(texts(results.lateStart), [["", true]]);
    assert.deepEqual(texts(results.misaligned), [["列", false], ["列", true]]);
    assert.equal(results.unchanged, true, "the text held before is left as it was");
    assert.deepEqual(await problems(), []);
  });
});
