// Bedrock Jobs web UI: sign up / confirm / sign in against Cognito, submit prompts, follow
// jobs until they end. No framework and no build step.
//
// A running job's text comes as it is written over the Event API's WebSocket (AWS AppSync
// Events, see "Live text" below); its state (status, attempts, the end) comes from long-polls
// of GET /jobs/{id}, which also bring its text, every flush, where there is no socket.
//
// What a model wrote is shown either as text (textContent) or as Markdown: marked turns it
// into HTML with raw HTML escaped, then DOMPurify keeps only a fixed list of harmless elements
// and http(s) links, so nothing in an answer can run, load or style anything.

import { Marked } from "./vendor/marked/marked.esm.js";

const SESSION_KEY = "bedrock-jobs.session";
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const PAGE_SIZE = 20;
/// The service's MAX_PROMPT_CHARS when config.json does not carry maxPromptChars.
const DEFAULT_MAX_PROMPT_CHARS = 20_000;
/// How long the server may hold a long-poll of GET /jobs/{id} (its maximum).
const WAIT_SECONDS = 20;
/// Long-polls in flight at once: a browser opens only six HTTP/1.1 connections to a host, and
/// submitting or refreshing must not queue behind requests the server is holding.
const MAX_LONG_POLLS = 4;
/// Pauses between two requests when the server answers at once with nothing new.
const FIRST_PAUSE_MS = 1000;
const MAX_PAUSE_MS = 5000;
const MAX_ERROR_PAUSE_MS = 10_000;

const RESTARTED = "The service was restarted; please sign in again.";
const RESTARTED_SIGN_UP = "The service was restarted; please create your account again.";
const SESSION_ENDED = "Your session has ended. Please sign in again.";

const $ = (id) => document.getElementById(id);
let config;
let session = null;
let purify = null;
const jobs = new Map(); // job_id → entry (see newEntry)
let nextCursor = null;

// ---------------------------------------------------------------------------------------
// Messages for people
// ---------------------------------------------------------------------------------------

/// Backticks are for developers; a person reads quotes.
function plain(message) {
  return String(message).replace(/`([^`]*)`/g, "\"$1\"").replace(/`/g, "");
}

function notify(message, kind = "error") {
  const notice = $("notice");
  notice.textContent = plain(message);
  notice.className = kind === "info" ? "notice info" : "notice";
  notice.hidden = false;
}

function clearNotice() {
  $("notice").hidden = true;
}

/// The banner above the jobs while the API cannot be reached; the list stays as it was.
function setUnreachable(unreachable) {
  $("offline").hidden = !unreachable;
}

/// Tells screen readers what changed, without making the whole list a live region.
function announce(message) {
  $("announcer").textContent = message;
}

/// "a, b and c"
function listing(items) {
  return items.length < 2 ? items.join("") : `${items.slice(0, -1).join(", ")} and ${items.at(-1)}`;
}

class ServiceError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// ---------------------------------------------------------------------------------------
// Cognito's errors as sentences
// ---------------------------------------------------------------------------------------

/// The user pool's password policy (template.yaml: MinimumLength 12, RequireLowercase,
/// RequireUppercase, RequireNumbers, RequireSymbols), counted as Cognito counts: ASCII
/// letters and digits, and its own list of symbols.
const PASSWORD_RULES = [
  ["length", "at least 12 characters", (password) => [...password].length >= 12],
  ["lower", "a lower-case letter", (password) => /[a-z]/.test(password)],
  ["upper", "an upper-case letter", (password) => /[A-Z]/.test(password)],
  ["digit", "a digit", (password) => /[0-9]/.test(password)],
  ["symbol", "a symbol", (password) => /[\^$*.[\]{}()?"!@#%&/\\,><':;|_~`=+-]/.test(password)],
];

function missingPasswordRules(password) {
  return PASSWORD_RULES.filter(([, , met]) => !met(password)).map(([, text]) => text);
}

function passwordSentence(password = "") {
  const missing = missingPasswordRules(password);
  return missing.length
    ? `This password is not strong enough: it needs ${listing(missing)}.`
    : "This password is not accepted: use at least 12 characters, with upper- and lower-case letters, a digit and a symbol.";
}

function showPasswordRules(password) {
  for (const [rule, , met] of PASSWORD_RULES) {
    const item = document.querySelector(`#password-rules [data-rule="${rule}"]`);
    const done = met(password);
    item.dataset.met = String(done);
    item.querySelector(".rule-state").textContent = done ? "Done: " : "Not yet: ";
  }
}

const TOO_MANY_TRIES = "Too many attempts; wait a few minutes and try again.";
const COGNITO_MESSAGES = {
  NotAuthorizedException: "Wrong e-mail or password.",
  UserNotFoundException: "Wrong e-mail or password.",
  UsernameExistsException: "An account with this e-mail already exists; sign in instead.",
  CodeMismatchException: "That confirmation code is not right; check the e-mail and try again.",
  ExpiredCodeException: "That confirmation code has expired; sign up again to get a new one.",
  LimitExceededException: TOO_MANY_TRIES,
  TooManyRequestsException: TOO_MANY_TRIES,
  TooManyFailedAttemptsException: TOO_MANY_TRIES,
};

/// A sentence for one of Cognito's errors: its own messages are written for developers
/// ("... does not confirm to the configured password policy", "Username should be either an
/// email or a phone number.") and differ between Cognito and the local emulator, so only
/// the error type and a few words of the message are read.
function cognitoSentence(type, message, body) {
  const about = String(message ?? "").toLowerCase();
  if (type === "InvalidPasswordException") return passwordSentence(body.Password);
  if (type === "InvalidParameterException") {
    if (about.includes("password")) return passwordSentence(body.Password);
    if (/user ?name|e-?mail/.test(about)) return "Enter your e-mail address, such as name@example.com.";
    if (about.includes("code")) return "Enter the confirmation code from the e-mail.";
  }
  if (type === "NotAuthorizedException" && about.includes("attempts exceeded")) return TOO_MANY_TRIES;
  // Its message is the unknown client id; explainAuthFailure finds out what happened.
  if (type === "ResourceNotFoundException") return RESTARTED;
  if (COGNITO_MESSAGES[type]) return COGNITO_MESSAGES[type];
  console.warn("The sign-in service refused a call:", type, message);
  return "The sign-in service could not do that just now; please try again.";
}

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

async function fetchConfig() {
  let response;
  try {
    response = await fetch("config.json", { cache: "no-store" });
  } catch {
    throw new ServiceError(0, "network", "The service can't be reached right now. Reload this page once it is running.");
  }
  const loaded = response.ok ? await response.json().catch(() => null) : null;
  if (!loaded) {
    throw new ServiceError(
      response.status,
      "no_config",
      "This page has no configuration (config.json). Deploy with scripts/deploy.sh, or run the local stack.",
    );
  }
  return loaded;
}

function applyConfig(next) {
  config = next;
  $("local-badge").hidden = !config.local;
  $("local-code-hint").hidden = !config.local;
  const chosen = $("model").value || config.defaultModel;
  const models = config.models?.length ? config.models : [config.defaultModel];
  $("model").replaceChildren(
    ...models.filter(Boolean).map((id) => {
      const option = document.createElement("option");
      option.value = id;
      option.textContent = id;
      option.selected = id === chosen;
      return option;
    }),
  );
  if (config.maxOutputTokens) $("max-tokens").max = String(config.maxOutputTokens);
  showPromptCount();
}

/// Reads config.json again; true when it names another app client than the page knew: the
/// service was redeployed, or the local stack restarted with new resources.
async function configChanged() {
  try {
    const fresh = await fetchConfig();
    if (fresh.userPoolClientId === config.userPoolClientId) return false;
    applyConfig(fresh);
    return true;
  } catch {
    return false;
  }
}

/// The prompt limit the service enforces, if config.json says; else its documented default.
function maxPromptChars() {
  return Number.isInteger(config?.maxPromptChars) ? config.maxPromptChars : DEFAULT_MAX_PROMPT_CHARS;
}

// ---------------------------------------------------------------------------------------
// Cognito (its JSON API, called directly: no SDK needed for these few calls)
// ---------------------------------------------------------------------------------------

async function cognito(action, body) {
  let response;
  try {
    response = await fetch(config.cognitoEndpoint, {
      method: "POST",
      headers: {
        "Content-Type": "application/x-amz-json-1.1",
        "X-Amz-Target": `AWSCognitoIdentityProviderService.${action}`,
      },
      body: JSON.stringify(body),
    });
  } catch {
    throw new ServiceError(0, "network", "Could not reach the sign-in service. Check your connection and try again.");
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const type = String(data.__type || "").split("#").pop();
    throw new ServiceError(response.status, type, cognitoSentence(type, data.message, body));
  }
  return data;
}

function tokenClaims(token) {
  const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
  return JSON.parse(atob(payload));
}

function keepSession(result, email, refreshToken) {
  session = {
    email,
    // Which app client issued the tokens: after a restart of the local stack it is gone.
    clientId: config.userPoolClientId,
    accessToken: result.AccessToken,
    refreshToken: result.RefreshToken || refreshToken,
    expiresAt: tokenClaims(result.AccessToken).exp * 1000,
  };
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
}

function storedSession() {
  try {
    return JSON.parse(sessionStorage.getItem(SESSION_KEY));
  } catch {
    return null;
  }
}

function forgetSession() {
  session = null;
  sessionStorage.removeItem(SESSION_KEY);
}

async function signIn(email, password) {
  const data = await cognito("InitiateAuth", {
    AuthFlow: "USER_PASSWORD_AUTH",
    ClientId: config.userPoolClientId,
    AuthParameters: { USERNAME: email, PASSWORD: password },
  });
  if (!data.AuthenticationResult) {
    throw new ServiceError(400, data.ChallengeName, "This account needs a step the web UI does not support yet.");
  }
  keepSession(data.AuthenticationResult, email);
}

let refreshing = null;

/// A new access token from the refresh token; false when the session cannot go on. Requests
/// that find the token stale at the same time share one refresh.
function refresh() {
  refreshing ??= renewTokens().finally(() => {
    refreshing = null;
  });
  return refreshing;
}

async function renewTokens() {
  if (!session?.refreshToken) return false;
  try {
    const data = await cognito("InitiateAuth", {
      AuthFlow: "REFRESH_TOKEN_AUTH",
      ClientId: config.userPoolClientId,
      AuthParameters: { REFRESH_TOKEN: session.refreshToken },
    });
    keepSession(data.AuthenticationResult, session.email, session.refreshToken);
    return true;
  } catch {
    return false;
  }
}

function endSession(message) {
  forgetSession();
  liveFeed.stop();
  for (const entry of [...jobs.values()]) dropEntry(entry);
  forgetUsage();
  showSubmitError("");
  setUnreachable(false);
  showAuth("sign-in");
  if (message) notify(message, "info");
}

let losing = null;

/// Ends a session the API no longer accepts, saying why: once, however many requests find
/// out at the same time.
function sessionLost() {
  losing ??= (async () => {
    const restarted = await configChanged();
    endSession(restarted ? RESTARTED : SESSION_ENDED);
  })().finally(() => {
    losing = null;
  });
  return losing;
}

// ---------------------------------------------------------------------------------------
// The API
// ---------------------------------------------------------------------------------------

async function api(method, path, { body, headers = {}, signal } = {}) {
  if (session && session.expiresAt - Date.now() < 60_000) await refresh();
  const send = () =>
    fetch(config.apiUrl.replace(/\/$/, "") + path, {
      method,
      headers: {
        Authorization: `Bearer ${session?.accessToken ?? ""}`,
        ...(body ? { "Content-Type": "application/json" } : {}),
        ...headers,
      },
      body: body ? JSON.stringify(body) : undefined,
      signal,
    });
  let response;
  try {
    response = await send();
    if (response.status === 401 && (await refresh())) response = await send();
  } catch (error) {
    if (error.name === "AbortError") throw error;
    setUnreachable(true);
    throw new ServiceError(0, "network", "Could not reach the service. Check your connection and try again.");
  }
  setUnreachable(false);
  if (response.status === 401) {
    await sessionLost();
    throw new ServiceError(401, "unauthorized", SESSION_ENDED);
  }
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const message = data?.error?.message || `The service answered with status ${response.status}.`;
    throw new ServiceError(response.status, data?.error?.code, message);
  }
  return data;
}

// ---------------------------------------------------------------------------------------
// Markdown
// ---------------------------------------------------------------------------------------

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

const markdown = new Marked({
  gfm: true,
  async: false,
  // The page's own headings are h1 and h2: an answer's start at h3, so the outline holds.
  walkTokens(token) {
    if (token.type === "heading") token.depth = Math.min(token.depth + 2, 6);
  },
  renderer: {
    // Raw HTML in an answer is shown as what it is, text, never parsed.
    html({ text, block }) {
      return block ? `<p>${escapeHtml(text)}</p>` : escapeHtml(text);
    },
    // An image would load from wherever the model points (and the policy allows data:
    // images): it becomes a link instead, which DOMPurify keeps only for http(s).
    image({ href, text }) {
      return `<a href="${escapeHtml(href)}">${escapeHtml(`Image: ${text || href}`)}</a>`;
    },
    // Task lists as characters, not as form controls.
    checkbox({ checked }) {
      return checked ? "☑ " : "☐ ";
    },
  },
});

/// What DOMPurify keeps: what Markdown makes, and nothing that can run, load or style.
const SANITIZE = {
  ALLOWED_TAGS: [
    "a", "blockquote", "br", "code", "del", "em", "h3", "h4", "h5", "h6", "hr", "li", "ol", "p",
    "pre", "strong", "table", "tbody", "td", "th", "thead", "tr", "ul",
  ],
  ALLOWED_ATTR: ["href", "title", "align", "start"],
  // Only absolute http(s) links keep their href. DOMPurify applies this pattern to every
  // attribute it does not know as URI-safe, so the two plain ones are named.
  ALLOWED_URI_REGEXP: /^https?:\/\//i,
  ADD_URI_SAFE_ATTR: ["align", "start"],
  ALLOW_DATA_ATTR: false,
  RETURN_DOM_FRAGMENT: true,
};

/// DOMPurify, loaded by index.html as a classic script; null if it did not load, and then
/// answers are shown as text only.
function setUpPurifier() {
  const library = globalThis.DOMPurify;
  if (!library?.isSupported) return null;
  library.addHook("afterSanitizeAttributes", (node) => {
    if (node.nodeName === "A" && node.hasAttribute("href")) {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer");
    }
  });
  return library;
}

function showMarkdown(container, text) {
  if (!purify) {
    container.textContent = text;
    return;
  }
  try {
    container.replaceChildren(purify.sanitize(markdown.parse(text), SANITIZE));
  } catch (error) {
    console.warn("Markdown could not be shown; showing text", error);
    container.textContent = text;
  }
}

// ---------------------------------------------------------------------------------------
// Times
// ---------------------------------------------------------------------------------------

function duration(milliseconds) {
  const seconds = Math.max(0, Math.round(milliseconds / 1000));
  if (seconds < 60) return `${seconds} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${seconds % 60} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

function ago(iso, now) {
  const seconds = Math.round((now - Date.parse(iso)) / 1000);
  if (seconds < 10) return "just now";
  if (seconds < 60) return `${seconds} s ago`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ago`;
  const hours = Math.floor(minutes / 60);
  if (hours < 24) return `${hours} h ago`;
  const days = Math.floor(hours / 24);
  return days === 1 ? "1 day ago" : `${days} days ago`;
}

const EXACT = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

/// A <time>: relative in the text, exact in its title (shown on hover) and datetime.
function setTime(element, iso, now) {
  if (element.dateTime !== iso) {
    element.dateTime = iso;
    element.title = EXACT.format(new Date(iso));
  }
  setText(element, ago(iso, now));
}

// ---------------------------------------------------------------------------------------
// One job
// ---------------------------------------------------------------------------------------

function field(element, name) {
  return element.querySelector(`[data-field="${name}"]`);
}

/// Shows a prompt's "Show the whole prompt" button only when the clamp hides part of it.
const clampWatcher = new ResizeObserver((records) => {
  for (const { target } of records) updateClampToggle(target);
});

function updateClampToggle(prompt) {
  const toggle = prompt.nextElementSibling;
  const clamped = prompt.classList.contains("clamped");
  toggle.hidden = clamped && prompt.scrollHeight <= prompt.clientHeight + 1;
}

function newEntry(jobId) {
  const element = $("job-template").content.firstElementChild.cloneNode(true);
  element.dataset.jobId = jobId;
  const entry = {
    id: jobId,
    job: {},
    element,
    follow: null, // the AbortController of the long-poll loop, while there is one
    submitted: false, // submitted from this page: its output opens by itself
    opened: false,
    shownOutput: undefined,
    held: undefined, // the text of its latest attempt as far as it is known (see spliceText)
    gapRead: null, // a read of the job after the live feed missed some text, while in flight
    gapReadAt: 0,
  };
  jobs.set(jobId, entry);
  const prompt = field(element, "prompt");
  prompt.id = `prompt-${jobId}`;
  field(element, "prompt-toggle").setAttribute("aria-controls", prompt.id);
  clampWatcher.observe(prompt);
  wireJob(entry);
  return entry;
}

/// Forgets a job: its loop, its watcher and its element.
function dropEntry(entry) {
  unfollow(entry);
  clampWatcher.unobserve(field(entry.element, "prompt"));
  entry.element.remove();
  jobs.delete(entry.id);
}

function wireJob(entry) {
  const { element } = entry;
  const stop = field(element, "stop");
  stop.addEventListener("click", async () => {
    stop.disabled = true;
    try {
      render(await api("POST", `/jobs/${encodeURIComponent(entry.job.job_id)}/cancel`));
    } catch (error) {
      // 409: it finished meanwhile; show it as it is.
      if (error.status === 409) await loadDetail(entry);
      else if (error.status !== 401) notify(error.message);
    } finally {
      stop.disabled = false;
      refreshUsage();
    }
  });

  const toggle = field(element, "prompt-toggle");
  toggle.addEventListener("click", () => {
    const expand = toggle.getAttribute("aria-expanded") !== "true";
    toggle.setAttribute("aria-expanded", String(expand));
    toggle.textContent = expand ? "Show less" : "Show the whole prompt";
    field(element, "prompt").classList.toggle("clamped", !expand);
  });

  // A list entry carries no output: it is read when someone opens it.
  const box = field(element, "output-box");
  box.addEventListener("toggle", () => fetchOutput(entry));

  const raw = field(element, "raw-toggle");
  raw.addEventListener("click", () => showRaw(entry, raw.getAttribute("aria-pressed") !== "true"));
  field(element, "copy").addEventListener("click", () => copyOutput(entry));
}

function showRaw(entry, raw) {
  const { element } = entry;
  field(element, "raw-toggle").setAttribute("aria-pressed", String(raw));
  field(element, "output").hidden = !raw;
  field(element, "markdown").hidden = raw;
}

async function copyOutput(entry) {
  const status = field(entry.element, "copy-status");
  try {
    await navigator.clipboard.writeText(entry.job.output ?? "");
    status.textContent = "Copied";
  } catch {
    // No clipboard (a page not served over HTTPS, or permission refused): the raw text is
    // the easiest to select by hand.
    showRaw(entry, true);
    status.textContent = "Copying is not allowed here; select the text and copy it.";
  }
  clearTimeout(entry.copyTimer);
  entry.copyTimer = setTimeout(() => {
    status.textContent = "";
  }, 3000);
}

/// "retrying: attempt 2 of 3" for an unfinished job whose model call failed (throttled, the
/// model busy) and that is being tried again. attempts counts model calls started, so a
/// running job at attempt 1 is simply running; from attempt 2 on, or queued again after an
/// attempt, it is a retry. M is shown only when config.json says maxAttempts.
function retryText(job) {
  const attempts = job.attempts ?? 0;
  if (TERMINAL.has(job.status)) return "";
  if (attempts < 2 && !(job.status === "queued" && attempts >= 1)) return "";
  const limit = Number.isInteger(config.maxAttempts) && config.maxAttempts > 0 ? ` of ${config.maxAttempts}` : "";
  return `retrying: attempt ${attempts}${limit}`;
}

function elapsedText(job, now) {
  if (!job.created_at) return "";
  const start = Date.parse(job.created_at);
  if (job.completed_at) return `took ${duration(Date.parse(job.completed_at) - start)}`;
  if (TERMINAL.has(job.status)) return "";
  return `${job.status === "running" ? "running for" : "waiting"} ${duration(now - start)}`;
}

function showTimes(entry, now = Date.now()) {
  const { job, element } = entry;
  if (job.created_at) setTime(field(element, "created"), job.created_at, now);
  field(element, "completed-box").hidden = !job.completed_at;
  if (job.completed_at) setTime(field(element, "completed"), job.completed_at, now);
  setText(field(element, "elapsed"), elapsedText(job, now));
}

function showSettings({ job, element }) {
  setText(field(element, "model"), job.model ?? "");
  const maxTokens = field(element, "max-tokens");
  maxTokens.hidden = job.max_tokens == null;
  setText(maxTokens, job.max_tokens == null ? "" : `up to ${job.max_tokens} tokens`);
  const temperature = field(element, "temperature");
  temperature.hidden = job.temperature == null;
  setText(temperature, job.temperature == null ? "" : `temperature ${job.temperature}`);
  field(element, "system-box").hidden = !job.system;
  setText(field(element, "system"), job.system ?? "");
}

/// Reads the output of a finished job that is not here (list entries carry none): a
/// succeeded job's once its box is opened; a stopped or failed job's at once, since only the
/// job itself says whether it kept any text.
function fetchOutput(entry) {
  const box = field(entry.element, "output-box");
  const { job } = entry;
  if (job.output !== undefined || !TERMINAL.has(job.status) || entry.loading) return;
  const succeeded = job.status === "succeeded";
  if (succeeded ? !box.open : entry.outputAsked) return;
  entry.loading = true;
  entry.outputAsked = true;
  if (succeeded) setText(field(entry.element, "markdown"), "Loading…");
  loadDetail(entry).finally(() => {
    entry.loading = false;
  });
}

/// What a job's text is called: a running job's is so far; a stopped or failed job keeps
/// what was written before.
const OUTPUT_TITLES = { cancelled: "Output before it was stopped", failed: "Output before it failed" };

function showOutput(entry) {
  const { job, element } = entry;
  const running = !TERMINAL.has(job.status);
  const box = field(element, "output-box");
  box.hidden = !(job.status === "succeeded" || job.output);
  setText(field(element, "output-title"), running ? "Output so far" : (OUTPUT_TITLES[job.status] ?? "Output"));
  // A job submitted here opens its output by itself, once, as soon as there is some.
  if (entry.submitted && !entry.opened && !box.hidden) {
    entry.opened = true;
    box.open = true;
  }
  if (job.output === undefined) {
    fetchOutput(entry);
    return;
  }
  if (job.output === entry.shownOutput) return;
  entry.shownOutput = job.output;
  field(element, "output").textContent = job.output;
  showMarkdown(field(element, "markdown"), job.output);
}

/// "12 tokens in, 80 out, cost $0.000012": what the job used, and what it cost where the
/// service knows its model's price. A succeeded job has the use the model reported, and so
/// has a stopped job whose model call ended after the stop; a failed one shows none (what it
/// counts against a budget is the usage panel's to say), whatever an answer carried.
function usageText(job) {
  const reported = job.status === "succeeded" || job.status === "cancelled";
  if (!reported || !job.usage) return "";
  const tokens = `${job.usage.input_tokens} tokens in, ${job.usage.output_tokens} out`;
  return job.cost_usd === undefined ? tokens : `${tokens}, cost ${dollars(job.cost_usd)}`;
}

/// Dollars with two significant digits below a cent (model calls cost fractions of one),
/// never in exponent notation.
function dollars(amount) {
  if (amount >= 0.01) return `$${amount.toFixed(4)}`;
  if (amount <= 0) return "$0";
  const decimals = Math.min(20, 1 - Math.floor(Math.log10(amount)));
  return `$${amount.toFixed(decimals)}`;
}

function render(job) {
  const entry = jobs.get(job.job_id) ?? newEntry(job.job_id);
  const before = entry.job;
  // Answers can cross (a list read begun before the last long-poll answer): seq grows with
  // every change, so an older record never replaces a newer one.
  if (job.seq !== undefined && before.seq !== undefined && job.seq < before.seq) return entry;
  // A list entry carries no output, and an older service does not repeat the settings a job
  // was submitted with: keep what we already know. But text read while the job was running
  // is not its final output: a list entry saying it has finished makes it be read again.
  entry.job = { ...before, ...job };
  if ("output" in job) entry.job.output = takeOutput(entry, entry.job);
  if (!("output" in job) && TERMINAL.has(job.status) && !TERMINAL.has(before.status)) {
    delete entry.job.output;
    entry.held = undefined;
  }
  const { element, job: current } = entry;

  const status = field(element, "status");
  setText(status, current.status);
  status.className = `status ${current.status}`;
  element.dataset.status = current.status;
  const retry = field(element, "retry");
  setText(retry, retryText(current));
  retry.hidden = !retry.textContent;
  field(element, "stop").hidden = TERMINAL.has(current.status);

  const prompt = field(element, "prompt");
  if (prompt.textContent !== (current.prompt ?? "")) {
    prompt.textContent = current.prompt ?? "";
    if (prompt.isConnected) updateClampToggle(prompt);
  }
  showSettings(entry);
  showTimes(entry);
  setText(field(element, "usage"), usageText(current));
  const error = field(element, "error");
  error.hidden = !current.error;
  setText(error, current.error ? plain(`Failed: ${current.error.message}`) : "");
  showOutput(entry);

  if (before.status && before.status !== current.status) {
    announce(`A job ${current.status}: ${shortPrompt(current)}`);
    // Its reservation is settled to what it used: the budget moved.
    if (TERMINAL.has(current.status) && !TERMINAL.has(before.status)) refreshUsage();
  }
  if (TERMINAL.has(current.status)) unfollow(entry);
  return entry;
}

function shortPrompt(job) {
  const text = (job.prompt ?? "").replace(/\s+/g, " ").trim();
  return text.length > 60 ? `${text.slice(0, 60)}…` : text;
}

async function loadDetail(entry) {
  try {
    render(await api("GET", `/jobs/${encodeURIComponent(entry.job.job_id)}`));
  } catch (error) {
    if (error.status !== 401 && error.status !== 0) notify(error.message);
  }
}

/// The text to show for a job as read from the API. A finished job's output is its whole
/// answer; a running job's is a prefix of its attempt's text as of the last flush (every 2 s),
/// which may be behind what the live feed brought: it only adds what is new, and a read of an
/// older attempt changes nothing.
function takeOutput(entry, job) {
  const attempt = job.attempts ?? entry.held?.attempt ?? 0;
  if (TERMINAL.has(job.status)) {
    entry.held = wholeText(attempt, job.output);
  } else {
    entry.held = spliceText(entry.held, { attempt, offset: 0, text: job.output }).held;
  }
  return entry.held.text;
}

/// A piece of text from the live feed: shown at once, unless the job has ended (its output is
/// then the API's). A piece past the end of the text held means some were missed: the job is
/// read again, and the pieces wait for what is missing.
function showLiveText(entry, piece) {
  if (!entry.follow || TERMINAL.has(entry.job.status)) return;
  const { held, gap } = spliceText(entry.held, piece);
  entry.held = held;
  if (entry.job.output !== held.text) {
    entry.job.output = held.text;
    showOutput(entry);
  }
  if (gap) readAfterGap(entry);
}

/// Reads a job whose live text has a gap: once at a time, and at most every GAP_READ_MS while
/// the gap stays open (a running job's text is read as of its last flush; the long-polls bring
/// the next one).
function readAfterGap(entry) {
  if (entry.gapRead || Date.now() - entry.gapReadAt < GAP_READ_MS) return;
  entry.gapReadAt = Date.now();
  entry.gapRead = readAgain(entry).finally(() => {
    entry.gapRead = null;
  });
}

/// Reads a followed job again, for its text (after a gap, after the live feed reconnected);
/// a failure is the long-polls' to find and say.
async function readAgain(entry) {
  try {
    render(await api("GET", `/jobs/${encodeURIComponent(entry.id)}`));
  } catch (error) {
    if (error.status !== 401) console.warn("Could not read a job again", error);
  }
}

// ---------------------------------------------------------------------------------------
// Following unfinished jobs: one long-poll loop each
// ---------------------------------------------------------------------------------------

let longPolls = 0;
const waitingForSlot = [];

async function withSlot(task) {
  while (longPolls >= MAX_LONG_POLLS) await new Promise((resolve) => waitingForSlot.push(resolve));
  longPolls += 1;
  try {
    return await task();
  } finally {
    longPolls -= 1;
    waitingForSlot.shift()?.();
  }
}

function sleep(milliseconds, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, milliseconds);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });
}

/// Follows an unfinished job: its long-poll loop, and its channel on the live feed.
function follow(entry) {
  if (entry.follow || TERMINAL.has(entry.job.status)) return;
  const controller = new AbortController();
  entry.follow = controller;
  liveFeed.watch(entry.id);
  followJob(entry, controller.signal).finally(() => {
    if (entry.follow === controller) unfollow(entry);
  });
}

function unfollow(entry) {
  entry.follow?.abort();
  entry.follow = null;
  liveFeed.unwatch(entry.id);
}

/// Asks GET /jobs/{id}?wait=20&after=SEQ until the job ends: the server answers as soon as
/// the job's seq passes SEQ (new output, a new status), or after at most 20 s. A server that
/// does not hold requests answers at once with the same seq; then the loop pauses, 1 s
/// growing to 5 s, rather than ask again in a tight loop.
async function followJob(entry, signal) {
  const path = `/jobs/${encodeURIComponent(entry.id)}`;
  let pause = 0;
  let quietPause = FIRST_PAUSE_MS;
  let failures = 0;
  while (!signal.aborted && !TERMINAL.has(entry.job.status)) {
    if (pause) await sleep(pause, signal);
    if (signal.aborted) return;
    const seen = entry.job.seq;
    // The first ask learns the seq (POST /generate does not say it), so it does not wait.
    const query = seen === undefined ? "" : `?wait=${WAIT_SECONDS}&after=${seen}`;
    const asked = Date.now();
    let job;
    try {
      job = await withSlot(() => api("GET", path + query, { signal }));
      // Stopped while the answer was on its way (a list entry said the job finished).
      if (signal.aborted) return;
    } catch (error) {
      if (signal.aborted || error.status === 401 || error.status === 404) return;
      failures += 1;
      pause = Math.min(FIRST_PAUSE_MS * 2 ** failures, MAX_ERROR_PAUSE_MS);
      continue;
    }
    failures = 0;
    render(job);
    const changed = job.seq !== seen;
    const held = Date.now() - asked >= (WAIT_SECONDS * 1000) / 2;
    if (changed || held) {
      pause = 0;
      quietPause = FIRST_PAUSE_MS;
    } else {
      pause = quietPause;
      quietPause = Math.min(quietPause * 1.5, MAX_PAUSE_MS);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Live text: the Event API's WebSocket (AWS AppSync Events)
// ---------------------------------------------------------------------------------------
//
// While someone subscribes to a running job's channel, /jobs/<sub>/<job id>, its worker
// publishes what the model writes there, at most every LIVE_PUBLISH_MS (200 ms by default;
// docs/contract.md, "Live output by push"), against a flush into the job every 2 s.
// The page holds one socket for every job it follows, subscribes to a job when it starts
// following it and unsubscribes when it stops; the long-polls go on beside it for the job's
// state, which is not published. A socket that cannot be opened, is refused, is not
// acknowledged in time or drops leaves the long-polls to bring the text, every flush; after a
// drop the socket is opened again (jittered back-off), each job subscribed to again and read
// once: the text read, then the pieces from its end on.

/// The Event API's WebSocket subprotocol; the other one offered carries the authorization.
const LIVE_SUBPROTOCOL = "aws-appsync-event-ws";
/// A socket not acknowledged this long after it was asked counts as failed.
const LIVE_ACK_TIMEOUT_MS = 5000;
/// Without connection_ack's connectionTimeoutMs: a socket silent this long is dead.
const LIVE_DEFAULT_TIMEOUT_MS = 300_000;
/// Pauses before opening the socket again: from 1 s, doubling with each failure in a row up to
/// 30 s, each a random half to whole of that.
const LIVE_FIRST_RETRY_MS = 1000;
const LIVE_MAX_RETRY_MS = 30_000;
/// Sockets in a row that fail (before their acknowledgement, or within LIVE_STABLE_MS of it),
/// after which the page keeps to long-polls until the next sign-in.
const LIVE_MAX_FAILURES = 6;
const LIVE_STABLE_MS = 1000;
/// While a job's live text has a gap, it is read again at most this often.
const GAP_READ_MS = 2000;
/// At most this many pieces wait past a gap; the job's own text, read later, covers the rest.
const MAX_PIECES_AHEAD = 256;

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

/// One attempt's text, whole: what a finished job's output is.
function wholeText(attempt, text) {
  return { attempt, text, bytes: utf8.encode(text).length, ahead: [] };
}

/// Adds `piece` to `held`, by the rules of the job's channel, and says whether something is
/// missing. `held` (undefined: nothing yet) is the text of attempt `held.attempt` that the page
/// has, from its start: `text`, `bytes` UTF-8 bytes long, and `ahead`, the pieces that start
/// past its end, waiting for what is missing before them. `piece` is `{attempt, offset, text}`:
/// `text` starts `offset` UTF-8 bytes (not UTF-16 units) into attempt `attempt`'s text, as a
/// live event says, or at 0 for a running job's output as read from the API.
///
/// A piece of an older attempt changes nothing; one of a newer attempt starts its text anew.
/// Of the same attempt: one that starts at the end is appended; one that starts before it
/// adds only the bytes past it, if any (text never shortens); one that starts past it waits in
/// `ahead` (a gap). Pieces in `ahead` are added as soon as the text reaches them. Returns
/// `{held, gap}`: the new text held (a new object; `held` is not changed) and whether it has a
/// gap, or a piece that does not line up with it: either way the job should be read again.
export function spliceText(held, piece) {
  if (held && piece.attempt < held.attempt) return { held, gap: held.ahead.length > 0 };
  const start = held && held.attempt === piece.attempt ? held : wholeText(piece.attempt, "");
  const pieces = [...start.ahead, piece].sort((a, b) => a.offset - b.offset);
  let { text, bytes } = start;
  const ahead = [];
  let misaligned = false;
  for (const next of pieces) {
    if (next.offset > bytes) {
      if (ahead.length < MAX_PIECES_AHEAD) ahead.push(next);
      continue;
    }
    const raw = utf8.encode(next.text);
    const known = bytes - next.offset;
    if (known >= raw.length) continue;
    // A cut inside a character: this piece is not of the text held.
    if ((raw[known] & 0xc0) === 0x80) {
      misaligned = true;
      continue;
    }
    text += fromUtf8.decode(raw.subarray(known));
    bytes = next.offset + raw.length;
  }
  return { held: { attempt: start.attempt, text, bytes, ahead }, gap: ahead.length > 0 || misaligned };
}

/// base64url without padding, of the UTF-8 of `text`.
function base64url(text) {
  const binary = Array.from(utf8.encode(text), (byte) => String.fromCharCode(byte)).join("");
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/// A data message's event, if it is text of job `jobId`.
function textEvent(raw, jobId) {
  let event = raw;
  if (typeof raw === "string") {
    try {
      event = JSON.parse(raw);
    } catch {
      return null;
    }
  }
  const valid =
    event?.type === "text" &&
    event.job_id === jobId &&
    Number.isInteger(event.attempt) &&
    Number.isInteger(event.offset) &&
    event.offset >= 0 &&
    typeof event.text === "string";
  return valid ? event : null;
}

/// The page's one socket to the Event API, and the jobs it subscribes to. It calls
/// `onText(jobId, event)` for each text event of a job it watches, and `onMissed(jobId)` when
/// some of a job's text may have been missed: once it is subscribed to again after a drop, or
/// when the server could not deliver an event.
class LiveFeed {
  #onText;
  #onMissed;
  #running = false;
  #socket = null;
  #acked = false;
  #ackedAt = 0;
  #failures = 0; // sockets in a row that failed (see LIVE_MAX_FAILURES)
  #retry = null; // the timer that opens the socket again
  #watchdog = null; // the acknowledgement's, then the keep-alives' deadline
  #timeoutMs = LIVE_DEFAULT_TIMEOUT_MS;
  #jobs = new Map(); // job id → { subscription: its id on this socket, or null; resume }
  // (resume: it was subscribed to on a socket that dropped, and is read once subscribed again)
  #subscriptions = new Map(); // subscription id → job id

  constructor({ onText, onMissed }) {
    this.#onText = onText;
    this.#onMissed = onMissed;
  }

  /// Opens the socket, if config.json names the Event API (once; start again after stop).
  start() {
    if (this.#running || !config.events?.realtime || !config.events?.http) return;
    this.#running = true;
    this.#failures = 0;
    this.#connect();
  }

  /// Closes the socket and forgets every job (signed out, or given up on).
  stop() {
    this.#running = false;
    clearTimeout(this.#retry);
    this.#retry = null;
    this.#close();
    this.#jobs.clear();
    this.#subscriptions.clear();
  }

  /// Subscribes to a job's channel: now, or once the socket is acknowledged.
  watch(jobId) {
    if (!this.#running || this.#jobs.has(jobId)) return;
    this.#jobs.set(jobId, { subscription: null, resume: false });
    if (this.#acked) this.#subscribe(jobId);
  }

  unwatch(jobId) {
    const job = this.#jobs.get(jobId);
    if (!job) return;
    this.#jobs.delete(jobId);
    if (job.subscription) {
      this.#subscriptions.delete(job.subscription);
      this.#send({ type: "unsubscribe", id: job.subscription });
    }
  }

  /// The HTTP endpoint's host, which the authorization names.
  #host() {
    return new URL(config.events.http).host;
  }

  async #connect() {
    this.#retry = null;
    if (session && session.expiresAt - Date.now() < 60_000) await refresh();
    // Signed out meanwhile, or a socket opened by another call (stopped and started again).
    if (!this.#running || !session || this.#socket) return;
    let socket;
    try {
      const authorization = { host: this.#host(), Authorization: session.accessToken };
      socket = new WebSocket(config.events.realtime, [LIVE_SUBPROTOCOL, `header-${base64url(JSON.stringify(authorization))}`]);
    } catch (error) {
      this.#dropped("could not be opened", error);
      return;
    }
    this.#socket = socket;
    this.#acked = false;
    this.#arm(LIVE_ACK_TIMEOUT_MS, "was not acknowledged in time");
    socket.addEventListener("open", () => {
      if (socket === this.#socket) this.#send({ type: "connection_init" });
    });
    socket.addEventListener("message", (event) => {
      if (socket === this.#socket) this.#receive(event.data);
    });
    socket.addEventListener("close", (event) => {
      if (socket === this.#socket) this.#dropped(`closed (${event.code})`);
    });
  }

  #receive(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return;
    }
    // Anything from the server shows the connection is alive.
    if (this.#acked) this.#arm(this.#timeoutMs, "heard nothing, not even a keep-alive");
    const jobId = this.#subscriptions.get(message.id);
    switch (message.type) {
      case "connection_ack":
        this.#acked = true;
        this.#ackedAt = Date.now();
        this.#timeoutMs = Number(message.connectionTimeoutMs) > 0 ? Number(message.connectionTimeoutMs) : LIVE_DEFAULT_TIMEOUT_MS;
        this.#arm(this.#timeoutMs, "heard nothing, not even a keep-alive");
        for (const id of this.#jobs.keys()) this.#subscribe(id);
        break;
      case "subscribe_success": {
        const job = this.#jobs.get(jobId);
        if (job?.resume) {
          job.resume = false;
          this.#onMissed(jobId);
        }
        break;
      }
      case "subscribe_error": {
        console.warn("The live feed refused a job's channel; it is followed by long-polls", message.errors);
        this.#subscriptions.delete(message.id);
        const job = this.#jobs.get(jobId);
        if (job) job.subscription = null;
        break;
      }
      case "data": {
        const event = jobId && textEvent(message.event, jobId);
        if (event) this.#onText(jobId, event);
        break;
      }
      case "broadcast_error":
        // An event of this subscription was not delivered (the server may close the socket
        // next, which is then a drop).
        console.warn("The live feed could not deliver an event", message.errors);
        if (jobId) this.#onMissed(jobId);
        break;
      case "connection_error":
        this.#dropped("was refused", message.errors);
        break;
      case "error":
        console.warn("The live feed answered with an error", message.errors);
        break;
      default:
        break; // ka, unsubscribe_success and _error
    }
  }

  /// Subscribes to a job's channel with a fresh token (the subscription is authorized on its
  /// own), unless it is subscribed already.
  async #subscribe(jobId) {
    if (session && session.expiresAt - Date.now() < 60_000) await refresh();
    const job = this.#jobs.get(jobId);
    const sub = session ? tokenClaims(session.accessToken).sub : "";
    // A channel segment is 1 to 50 letters, digits and dashes; a Cognito sub is a UUID.
    if (!job || job.subscription || !this.#acked || !/^[A-Za-z0-9-]{1,50}$/.test(sub)) return;
    const id = crypto.randomUUID();
    job.subscription = id;
    this.#subscriptions.set(id, jobId);
    this.#send({
      type: "subscribe",
      id,
      channel: `/jobs/${sub}/${jobId}`,
      authorization: { Authorization: session.accessToken, host: this.#host() },
    });
  }

  #send(message) {
    if (this.#socket?.readyState === WebSocket.OPEN) this.#socket.send(JSON.stringify(message));
  }

  /// Closes the socket if it does not hear from the server within `milliseconds`.
  #arm(milliseconds, why) {
    clearTimeout(this.#watchdog);
    this.#watchdog = setTimeout(() => this.#dropped(why), milliseconds);
  }

  #close() {
    clearTimeout(this.#watchdog);
    const socket = this.#socket;
    this.#socket = null;
    this.#acked = false;
    if (socket && socket.readyState !== WebSocket.CLOSED) socket.close();
  }

  /// The socket is gone (or never came): open another one after a pause, subscribe to every
  /// job again and read each once; or, after too many failures in a row, keep to long-polls.
  #dropped(why, detail) {
    const acked = this.#acked;
    this.#close();
    for (const job of this.#jobs.values()) {
      if (job.subscription) job.resume = true;
      job.subscription = null;
    }
    this.#subscriptions.clear();
    if (!this.#running) return;
    this.#failures = acked && Date.now() - this.#ackedAt >= LIVE_STABLE_MS ? 0 : this.#failures + 1;
    if (this.#failures >= LIVE_MAX_FAILURES) {
      console.warn(`The live feed ${why}, ${this.#failures} times in a row; jobs are followed by long-polls`, detail ?? "");
      this.stop();
      return;
    }
    console.info(`The live feed ${why}; opening it again`, detail ?? "");
    const ceiling = Math.min(LIVE_FIRST_RETRY_MS * 2 ** this.#failures, LIVE_MAX_RETRY_MS);
    this.#retry = setTimeout(() => this.#connect(), ceiling * (0.5 + Math.random() / 2));
  }
}

const liveFeed = new LiveFeed({
  onText(jobId, event) {
    const entry = jobs.get(jobId);
    if (entry) showLiveText(entry, event);
  },
  onMissed(jobId) {
    const entry = jobs.get(jobId);
    if (entry?.follow) readAgain(entry);
  },
});

// ---------------------------------------------------------------------------------------
// The list
// ---------------------------------------------------------------------------------------

function updateEmpty() {
  $("jobs-empty").hidden = $("jobs").children.length > 0;
}

function fetchPage(cursor) {
  const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (cursor) query.set("cursor", cursor);
  return api("GET", `/jobs?${query}`);
}

function showPage(page, { first }) {
  const entries = page.jobs.map((job) => render(job));
  const elements = entries.map((entry) => entry.element);
  if (first) {
    const listed = new Set(page.jobs.map((job) => job.job_id));
    // Jobs submitted here that the list does not have yet (its index catches up a moment
    // later when deployed) stay on top.
    const mine = [...jobs.values()].filter((entry) => entry.submitted && !listed.has(entry.id));
    for (const entry of [...jobs.values()]) {
      if (!listed.has(entry.id) && !entry.submitted) dropEntry(entry);
    }
    $("jobs").replaceChildren(...mine.map((entry) => entry.element), ...elements);
  } else {
    $("jobs").append(...elements);
  }
  for (const entry of entries) follow(entry);
  nextCursor = page.next_cursor ?? null;
  $("more").hidden = !nextCursor;
  updateEmpty();
}

/// The first page again. The list on screen stays until the new one has arrived, so a
/// failed refresh loses nothing; the banner says the service cannot be reached.
async function reloadJobs() {
  try {
    showPage(await fetchPage(), { first: true });
  } catch (error) {
    if (error.status !== 401 && error.status !== 0) notify(error.message);
  }
}

async function loadMore() {
  try {
    showPage(await fetchPage(nextCursor), { first: false });
  } catch (error) {
    if (error.status !== 401 && error.status !== 0) notify(error.message);
  }
}

// ---------------------------------------------------------------------------------------
// Usage and budgets (GET /usage)
// ---------------------------------------------------------------------------------------

/// Triggers that come together (a submission and a job ending, several jobs ending) make one
/// request; one in flight is followed by at most one more.
const USAGE_DEBOUNCE_MS = 250;
/// How long after a period's end it is read again (the service's clock may lag the page's).
const USAGE_ROLLOVER_DELAY_MS = 5000;
let usage = null; // the last answer of GET /usage
let usageTimer = null;
let usageLoading = false;
let usageAgain = false;
let usageEpoch = 0; // grows at sign-out: an answer for the last user is dropped

/// Reads GET /usage again, soon. Called on sign-in, after a submission (accepted or refused
/// over budget), when a job ends or is stopped, and on Refresh; never on a timer, except once
/// when the day (or month) shown has ended.
function refreshUsage() {
  if (!session) return;
  clearTimeout(usageTimer);
  usageTimer = setTimeout(loadUsage, USAGE_DEBOUNCE_MS);
}

async function loadUsage() {
  usageTimer = null;
  if (usageLoading) {
    usageAgain = true;
    return;
  }
  usageLoading = true;
  const epoch = usageEpoch;
  try {
    const answer = await api("GET", "/usage");
    if (epoch === usageEpoch && session) showUsage(answer);
  } catch (error) {
    // A service without GET /usage: no panel. Unreachable: the last figures stay.
    if (epoch === usageEpoch && error.status === 404) forgetUsage();
  } finally {
    usageLoading = false;
    // Asked for meanwhile (forgetUsage clears this for a user who signed out).
    if (usageAgain) {
      usageAgain = false;
      loadUsage();
    }
  }
}

function forgetUsage() {
  usageEpoch += 1;
  clearTimeout(usageTimer);
  usageTimer = null;
  usageAgain = false;
  usage = null;
  $("usage").hidden = true;
}

const count = (n) => Math.round(n).toLocaleString("en");

/// A budget's limit, or what is left of it, in dollars: in cents where that is exact, else as
/// `dollars` does but never rounded up (what is left must not look like more than it is).
function budgetDollars(amount) {
  const cents = Math.round(amount * 100);
  if (Math.abs(amount * 100 - cents) < 1e-6) return `$${(cents / 100).toFixed(2)}`;
  if (amount >= 0.01) return `$${(Math.floor(amount * 1e4) / 1e4).toFixed(4)}`;
  return dollars(amount);
}

/// "in 5 h": the time until a period resets, coarsely.
function until(milliseconds) {
  const minutes = Math.floor(milliseconds / 60_000);
  if (minutes < 1) return "in less than a minute";
  if (minutes < 60) return `in ${minutes} min`;
  const hours = Math.floor(minutes / 60);
  if (hours < 48) return `in ${hours} h`;
  return `in ${Math.floor(hours / 24)} days`;
}

/// How one period reads: tokens today, dollars this month.
const PERIODS = {
  day: { element: "usage-day", when: "today", unit: "tokens" },
  month: { element: "usage-month", when: "this month", unit: "usd" },
};

function periodFigures(kind, period) {
  const tokens = PERIODS[kind].unit === "tokens";
  const used = Number(tokens ? period.tokens : period.cost_usd) || 0;
  const reserved = Number(tokens ? period.reserved_tokens : period.reserved_usd) || 0;
  // Use and reservations to the token or to two significant digits of a cent; a limit, and
  // what is left of it, to the token or cent.
  const amount = tokens ? count : dollars;
  const budgetAmount = tokens ? count : budgetDollars;
  const limit = period.budget ? Number(period.budget.limit) : null;
  const left = period.budget ? Math.max(0, Number(period.budget.left) || 0) : null;
  const limitText = limit === null ? "" : budgetAmount(limit);
  const leftText = left === null ? "" : budgetAmount(left);
  return { tokens, used, reserved, amount, limit, limitText, left, leftText };
}

function showUsage(answer) {
  // When the first period shown ends, a moment after; never for periods already over when
  // read (a clock ahead of the service's), which would ask again and again.
  const now = Date.now();
  const ends = ["day", "month"].map((kind) => Date.parse(answer[kind]?.ends_at)).filter((at) => at > now);
  usage = { ...answer, staleAt: ends.length ? Math.min(...ends) + USAGE_ROLLOVER_DELAY_MS : Infinity };
  for (const kind of Object.keys(PERIODS)) showPeriod(kind, answer[kind]);
  $("usage").hidden = false;
  tickUsage(Date.now());
}

function showPeriod(kind, period) {
  const element = $(PERIODS[kind].element);
  element.hidden = !period;
  if (!period) return;
  const { when } = PERIODS[kind];
  const { tokens, used, reserved, amount, limit, limitText, left, leftText } = periodFigures(kind, period);
  const noun = tokens ? " tokens" : "";
  setText(
    field(element, "used"),
    limit === null ? `${amount(used)}${noun} ${when}` : `${amount(used)} of ${limitText}${noun} ${when}`,
  );
  setText(field(element, "reserved"), reserved > 0 ? `(+${amount(reserved)}${noun} reserved by running jobs)` : "");

  const meter = field(element, "meter");
  meter.hidden = limit === null;
  if (limit === null) return;
  const share = (part) => (limit > 0 ? Math.min(100, (100 * part) / limit) : 100);
  const usedShare = share(used);
  const reservedShare = Math.min(100 - usedShare, share(reserved));
  const level = left <= 0 ? "full" : usedShare + reservedShare >= 80 ? "high" : "ok";
  meter.dataset.level = level;
  field(element, "meter-used").style.width = `${usedShare}%`;
  field(element, "meter-reserved").style.width = `${reservedShare}%`;
  meter.setAttribute("aria-valuemax", String(limit));
  meter.setAttribute("aria-valuenow", String(Math.min(limit, used + reserved)));
  const held = reserved > 0 ? ` and ${amount(reserved)} reserved` : "";
  meter.setAttribute("aria-valuetext", `${amount(used)} used${held} of ${limitText}${noun}; ${leftText}${noun} left`);
  const note = field(element, "note");
  note.dataset.level = level;
}

/// The "left · resets in" lines follow the clock; once a period shown has ended, the figures
/// are read again (once).
function tickUsage(now) {
  if (!usage || $("usage").hidden) return;
  if (now >= usage.staleAt) {
    usage.staleAt = Infinity;
    refreshUsage();
  }
  for (const kind of Object.keys(PERIODS)) {
    const period = usage[kind];
    if (!period) continue;
    const note = field($(PERIODS[kind].element), "note");
    note.hidden = !period.budget;
    if (!period.budget) continue;
    const { tokens, left, leftText } = periodFigures(kind, period);
    const ends = Date.parse(period.ends_at);
    const resets = Number.isNaN(ends) ? "" : ` · resets ${until(ends - now)}`;
    setText(note, `${left > 0 ? `${leftText}${tokens ? " tokens" : ""} left` : "None left"}${resets}`);
    if (!Number.isNaN(ends) && note.title !== EXACT.format(new Date(ends))) note.title = EXACT.format(new Date(ends));
  }
}

// ---------------------------------------------------------------------------------------
// Submitting
// ---------------------------------------------------------------------------------------

function promptLength() {
  // The service counts characters (code points) of the trimmed prompt.
  return [...$("prompt").value.trim()].length;
}

function showPromptCount() {
  const used = promptLength();
  const limit = maxPromptChars();
  const count = $("prompt-count");
  count.textContent = `${used.toLocaleString("en")} of ${limit.toLocaleString("en")} characters`;
  count.dataset.over = String(used > limit);
}

/// The request: blank optional fields are left out, so the service applies its defaults.
function requestBody(form) {
  const body = { prompt: form.prompt.value, model: form.model.value };
  if (form.max_tokens.value.trim() !== "") body.max_tokens = Number(form.max_tokens.value);
  if (form.temperature.value.trim() !== "") body.temperature = Number(form.temperature.value);
  if (form.system.value.trim()) body.system = form.system.value;
  return body;
}

/// The service's sentence for a submission it refused over budget, next to the button.
function showSubmitError(message) {
  const box = $("submit-error");
  box.textContent = message ? plain(message) : "";
  box.hidden = !message;
}

async function submit(event) {
  event.preventDefault();
  clearNotice();
  showSubmitError("");
  const form = event.target;
  if (!form.prompt.value.trim()) {
    notify("Write a prompt first.");
    form.prompt.focus();
    return;
  }
  // Only a limit config.json states is enforced here; the default is the service's to apply.
  if (Number.isInteger(config.maxPromptChars) && promptLength() > config.maxPromptChars) {
    notify(`The prompt has ${promptLength().toLocaleString("en")} characters; the limit is ${config.maxPromptChars.toLocaleString("en")}.`);
    form.prompt.focus();
    return;
  }
  const body = requestBody(form);
  const button = $("submit");
  button.disabled = true;
  try {
    // One key per submission: if this request is repeated, it is still one job.
    const accepted = await api("POST", "/generate", {
      body,
      headers: { "Idempotency-Key": crypto.randomUUID() },
    });
    const entry = jobs.get(accepted.job_id) ?? newEntry(accepted.job_id);
    entry.submitted = true;
    render({
      ...accepted,
      prompt: body.prompt.trim(),
      model: body.model,
      max_tokens: body.max_tokens,
      temperature: body.temperature,
      system: body.system?.trim(),
    });
    $("jobs").prepend(entry.element);
    updateEmpty();
    form.prompt.value = "";
    showPromptCount();
    follow(entry);
    // The job holds its worst case until it ends.
    refreshUsage();
  } catch (error) {
    if (error.code === "budget_exceeded") {
      // The prompt stays in the box, to submit once the budget resets (or shortened).
      showSubmitError(error.message);
      refreshUsage();
    } else if (error.status !== 401) {
      notify(error.message);
    }
  } finally {
    button.disabled = false;
  }
}

// Relative times, and the elapsed time of the jobs still going.
setInterval(() => {
  const now = Date.now();
  for (const entry of jobs.values()) showTimes(entry, now);
  tickUsage(now);
}, 1000);

// ---------------------------------------------------------------------------------------
// Views
// ---------------------------------------------------------------------------------------

const AUTH_VIEWS = {
  "sign-in": ["sign-in-form", "Sign in"],
  "sign-up": ["sign-up-form", "Create an account"],
  confirm: ["confirm-form", "Confirm your e-mail"],
};

function showAuth(view) {
  $("workspace").hidden = true;
  $("account").hidden = true;
  $("auth").hidden = false;
  for (const [name, [formId, title]] of Object.entries(AUTH_VIEWS)) {
    $(formId).hidden = name !== view;
    if (name === view) {
      $("auth-title").textContent = title;
      $(formId).querySelector("input")?.focus();
    }
  }
}

function showWorkspace() {
  clearNotice();
  $("auth").hidden = true;
  $("workspace").hidden = false;
  $("account").hidden = false;
  $("account-email").textContent = session.email;
  $("account-email").title = session.email;
  $("prompt").focus();
  liveFeed.start();
  reloadJobs();
  refreshUsage();
}

let pendingEmail = "";
let pendingPassword = "";

/// A form's submit handler: one call at a time, its failure said in a sentence.
function withBusyForm(form, action) {
  return async (event) => {
    event.preventDefault();
    clearNotice();
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      await action();
    } catch (error) {
      await explainAuthFailure(form, error);
    } finally {
      button.disabled = false;
    }
  };
}

async function explainAuthFailure(form, error) {
  if (error.code === "UserNotConfirmedException") {
    showAuth("confirm");
    notify("Confirm your e-mail address first: enter the code we sent you.", "info");
  } else if (error.code === "ResourceNotFoundException") {
    // The app client the page knows is gone: the service was restarted (the local stack
    // makes new resources at every start) or redeployed. config.json names the new one.
    if (await configChanged()) {
      forgetSession();
      if (form.id === "sign-in-form") {
        notify(RESTARTED, "info");
      } else {
        showAuth("sign-up");
        notify(RESTARTED_SIGN_UP, "info");
      }
    } else {
      notify("The sign-in service does not know this page's app client: its configuration (config.json) is out of date.");
    }
  } else {
    notify(error.message);
  }
}

function wire() {
  for (const button of document.querySelectorAll("[data-view]")) {
    button.addEventListener("click", () => {
      clearNotice();
      showAuth(button.dataset.view);
    });
  }

  const signInForm = $("sign-in-form");
  signInForm.addEventListener("submit", withBusyForm(signInForm, async () => {
    pendingEmail = signInForm.email.value.trim();
    pendingPassword = signInForm.password.value;
    $("confirm-email-text").textContent = pendingEmail;
    await signIn(pendingEmail, pendingPassword);
    signInForm.reset();
    showWorkspace();
  }));

  const signUpForm = $("sign-up-form");
  signUpForm.password.addEventListener("input", () => showPasswordRules(signUpForm.password.value));
  showPasswordRules("");
  signUpForm.addEventListener("submit", withBusyForm(signUpForm, async () => {
    pendingEmail = signUpForm.email.value.trim();
    pendingPassword = signUpForm.password.value;
    await cognito("SignUp", {
      ClientId: config.userPoolClientId,
      Username: pendingEmail,
      Password: pendingPassword,
      UserAttributes: [{ Name: "email", Value: pendingEmail }],
    });
    $("confirm-email-text").textContent = pendingEmail;
    signUpForm.reset();
    showPasswordRules("");
    showAuth("confirm");
  }));

  const confirmForm = $("confirm-form");
  confirmForm.addEventListener("submit", withBusyForm(confirmForm, async () => {
    await cognito("ConfirmSignUp", {
      ClientId: config.userPoolClientId,
      Username: pendingEmail,
      ConfirmationCode: confirmForm.code.value.trim(),
    });
    confirmForm.reset();
    if (pendingPassword) {
      await signIn(pendingEmail, pendingPassword);
      pendingPassword = "";
      showWorkspace();
    } else {
      showAuth("sign-in");
      notify("Your e-mail is confirmed. Sign in to continue.", "info");
    }
  }));

  $("sign-out").addEventListener("click", async () => {
    const token = session?.accessToken;
    endSession("You are signed out.");
    if (token) await cognito("GlobalSignOut", { AccessToken: token }).catch(() => {});
  });

  const generate = $("generate-form");
  generate.addEventListener("submit", submit);
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) generate.requestSubmit();
  });
  $("prompt").addEventListener("input", showPromptCount);
  $("refresh").addEventListener("click", () => {
    reloadJobs();
    refreshUsage();
  });
  $("more").addEventListener("click", () => loadMore());
}

async function start() {
  purify = setUpPurifier();
  try {
    applyConfig(await fetchConfig());
  } catch (error) {
    notify(error.message);
    return;
  }
  wire();

  session = storedSession();
  if (session?.clientId && session.clientId !== config.userPoolClientId) {
    // Tokens of an app client config.json no longer names: the service was restarted.
    forgetSession();
    showAuth("sign-in");
    notify(RESTARTED, "info");
    return;
  }
  if (session && (session.expiresAt - Date.now() > 60_000 || (await refresh()))) {
    showWorkspace();
  } else {
    forgetSession();
    showAuth("sign-in");
  }
}

start();
