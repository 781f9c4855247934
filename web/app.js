// Bedrock Jobs web UI: sign up / confirm / sign in against Cognito, submit prompts, follow
// jobs until they end. No framework and no build step; everything the model wrote is shown
// with textContent, never parsed as HTML.

const SESSION_KEY = "bedrock-jobs.session";
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const PAGE_SIZE = 20;

const $ = (id) => document.getElementById(id);
let config;
let session = null;
const jobs = new Map(); // job_id → { job, element, watching }
let nextCursor = null;

// ---------------------------------------------------------------------------------------
// Messages for people
// ---------------------------------------------------------------------------------------

function notify(message, kind = "error") {
  const notice = $("notice");
  notice.textContent = message;
  notice.className = kind === "info" ? "notice info" : "notice";
  notice.hidden = false;
}

function clearNotice() {
  $("notice").hidden = true;
}

class ServiceError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const COGNITO_MESSAGES = {
  NotAuthorizedException: "Wrong e-mail or password.",
  UserNotFoundException: "Wrong e-mail or password.",
  UsernameExistsException: "An account with this e-mail already exists; sign in instead.",
  CodeMismatchException: "That confirmation code is not right; check the e-mail and try again.",
  ExpiredCodeException: "That confirmation code has expired; sign up again to get a new one.",
  LimitExceededException: "Too many attempts; wait a few minutes and try again.",
  TooManyRequestsException: "Too many attempts; wait a few minutes and try again.",
};

// ---------------------------------------------------------------------------------------
// Cognito (its JSON API, called directly: no SDK needed for these five calls)
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
    const message = COGNITO_MESSAGES[type] || data.message || `Sign-in failed (${response.status}).`;
    throw new ServiceError(response.status, type, message);
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
    accessToken: result.AccessToken,
    refreshToken: result.RefreshToken || refreshToken,
    expiresAt: tokenClaims(result.AccessToken).exp * 1000,
  };
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
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

/// A new access token from the refresh token; false when the session cannot go on.
async function refresh() {
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
  session = null;
  sessionStorage.removeItem(SESSION_KEY);
  for (const entry of jobs.values()) entry.watching = false;
  jobs.clear();
  $("jobs").replaceChildren();
  showAuth("sign-in");
  if (message) notify(message, "info");
}

// ---------------------------------------------------------------------------------------
// The API
// ---------------------------------------------------------------------------------------

async function api(method, path, { body, headers = {} } = {}) {
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
    });
  let response;
  try {
    response = await send();
    if (response.status === 401 && (await refresh())) response = await send();
  } catch {
    throw new ServiceError(0, "network", "Could not reach the service. Check your connection and try again.");
  }
  if (response.status === 401) {
    endSession("Your session has ended. Please sign in again.");
    throw new ServiceError(401, "unauthorized", "Your session has ended. Please sign in again.");
  }
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const message = data?.error?.message || `The service answered with status ${response.status}.`;
    throw new ServiceError(response.status, data?.error?.code, message);
  }
  return data;
}

// ---------------------------------------------------------------------------------------
// Jobs
// ---------------------------------------------------------------------------------------

function elapsed(job) {
  const start = Date.parse(job.created_at);
  const end = job.completed_at ? Date.parse(job.completed_at) : Date.now();
  const seconds = Math.max(0, Math.round((end - start) / 1000));
  return seconds < 60 ? `${seconds} s` : `${Math.floor(seconds / 60)} min ${seconds % 60} s`;
}

function field(element, name) {
  return element.querySelector(`[data-field="${name}"]`);
}

function render(job) {
  let entry = jobs.get(job.job_id);
  if (!entry) {
    const element = $("job-template").content.firstElementChild.cloneNode(true);
    element.dataset.jobId = job.job_id;
    entry = { job: {}, element, watching: false };
    jobs.set(job.job_id, entry);
    const stop = field(element, "stop");
    stop.addEventListener("click", async () => {
      stop.disabled = true;
      try {
        render(await api("POST", `/jobs/${encodeURIComponent(job.job_id)}/cancel`));
      } catch (error) {
        // 409: it finished meanwhile; show it as it is.
        if (error.status === 409) await loadDetail(job.job_id);
        else notify(error.message);
      } finally {
        stop.disabled = false;
      }
    });
    const box = field(element, "output-box");
    box.addEventListener("toggle", () => {
      if (box.open && entry.job.output === undefined) {
        field(element, "output").textContent = "Loading…";
        loadDetail(job.job_id);
      }
    });
  }
  // A list entry carries no output: keep the one we already have.
  entry.job = { ...entry.job, ...job };
  const { element } = entry;
  const current = entry.job;

  const status = field(element, "status");
  status.textContent = current.status;
  status.className = `status ${current.status}`;
  element.dataset.status = current.status;
  field(element, "stop").hidden = TERMINAL.has(current.status);
  field(element, "prompt").textContent = current.prompt ?? "";
  field(element, "prompt").title = current.prompt ?? "";
  field(element, "model").textContent = current.model ?? "";
  field(element, "elapsed").textContent = current.created_at ? elapsed(current) : "";
  field(element, "usage").textContent = current.usage
    ? `${current.usage.input_tokens} tokens in, ${current.usage.output_tokens} out`
    : "";

  const error = field(element, "error");
  error.hidden = !current.error;
  error.textContent = current.error ? `Failed: ${current.error.message}` : "";

  const box = field(element, "output-box");
  box.hidden = current.status !== "succeeded";
  if (current.output !== undefined) field(element, "output").textContent = current.output;
  return entry;
}

function show(entry, { first }) {
  const list = $("jobs");
  if (!entry.element.isConnected) {
    if (first) list.prepend(entry.element);
    else list.append(entry.element);
  }
  $("jobs-empty").hidden = list.children.length > 0;
}

async function loadDetail(jobId) {
  try {
    render(await api("GET", `/jobs/${encodeURIComponent(jobId)}`));
  } catch (error) {
    notify(error.message);
  }
}

/// Polls a job until it ends: after 1 s, then backing off to every 10 s.
async function watch(jobId, { openWhenDone = false } = {}) {
  const entry = jobs.get(jobId);
  if (!entry || entry.watching) return;
  entry.watching = true;
  let delay = 1000;
  while (entry.watching && !TERMINAL.has(entry.job.status)) {
    await new Promise((resolve) => setTimeout(resolve, delay));
    if (!entry.watching) return;
    try {
      const job = await api("GET", `/jobs/${encodeURIComponent(jobId)}`);
      render(job);
    } catch (error) {
      if (error.status === 401) return;
      if (error.status === 404) {
        entry.watching = false;
        return;
      }
    }
    delay = Math.min(delay * 1.5, 10_000);
  }
  entry.watching = false;
  if (openWhenDone && entry.job.status === "succeeded") field(entry.element, "output-box").open = true;
}

async function loadJobs({ more = false } = {}) {
  const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (more && nextCursor) query.set("cursor", nextCursor);
  try {
    const page = await api("GET", `/jobs?${query}`);
    for (const job of page.jobs) {
      const entry = render(job);
      show(entry, { first: false });
      if (!TERMINAL.has(job.status)) watch(job.job_id);
    }
    nextCursor = page.next_cursor;
    $("more").hidden = !nextCursor;
    $("jobs-empty").hidden = $("jobs").children.length > 0;
  } catch (error) {
    if (error.status !== 401) notify(error.message);
  }
}

function reloadJobs() {
  for (const entry of jobs.values()) entry.watching = false;
  jobs.clear();
  $("jobs").replaceChildren();
  nextCursor = null;
  return loadJobs();
}

async function submit(event) {
  event.preventDefault();
  clearNotice();
  const form = event.target;
  const prompt = form.prompt.value;
  if (!prompt.trim()) {
    notify("Write a prompt first.");
    form.prompt.focus();
    return;
  }
  const body = { prompt, model: form.model.value, max_tokens: Number(form.max_tokens.value) };
  if (form.temperature.value !== "") body.temperature = Number(form.temperature.value);
  if (form.system.value.trim()) body.system = form.system.value;

  const button = $("submit");
  button.disabled = true;
  try {
    // One key per submission: if this request is repeated, it is still one job.
    const accepted = await api("POST", "/generate", {
      body,
      headers: { "Idempotency-Key": crypto.randomUUID() },
    });
    const entry = render({ ...accepted, prompt: prompt.trim(), model: body.model });
    show(entry, { first: true });
    form.prompt.value = "";
    watch(accepted.job_id, { openWhenDone: true });
  } catch (error) {
    if (error.status !== 401) notify(error.message);
  } finally {
    button.disabled = false;
  }
}

// Elapsed time of the jobs still going.
setInterval(() => {
  for (const { job, element } of jobs.values()) {
    if (job.created_at && !TERMINAL.has(job.status)) field(element, "elapsed").textContent = elapsed(job);
  }
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
  $("prompt").focus();
  reloadJobs();
}

let pendingEmail = "";
let pendingPassword = "";

function withBusyForm(form, action) {
  return async (event) => {
    event.preventDefault();
    clearNotice();
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      await action();
    } catch (error) {
      if (error.code === "UserNotConfirmedException") {
        showAuth("confirm");
        notify("Confirm your e-mail address first: enter the code we sent you.", "info");
      } else {
        notify(error.message);
      }
    } finally {
      button.disabled = false;
    }
  };
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
  $("refresh").addEventListener("click", () => reloadJobs());
  $("more").addEventListener("click", () => loadJobs({ more: true }));
}

async function start() {
  try {
    const response = await fetch("config.json", { cache: "no-store" });
    if (!response.ok) throw new Error(String(response.status));
    config = await response.json();
  } catch {
    notify("This page has no configuration (config.json). Deploy with scripts/deploy.sh, or run the local stack.");
    return;
  }
  $("local-badge").hidden = !config.local;
  $("local-code-hint").hidden = !config.local;
  const models = config.models?.length ? config.models : [config.defaultModel];
  $("model").replaceChildren(
    ...models.filter(Boolean).map((id) => {
      const option = document.createElement("option");
      option.value = id;
      option.textContent = id;
      option.selected = id === config.defaultModel;
      return option;
    }),
  );
  if (config.maxOutputTokens) $("max-tokens").max = String(config.maxOutputTokens);
  wire();

  try {
    session = JSON.parse(sessionStorage.getItem(SESSION_KEY));
  } catch {
    session = null;
  }
  if (session && (session.expiresAt - Date.now() > 60_000 || (await refresh()))) {
    showWorkspace();
  } else {
    session = null;
    showAuth("sign-in");
  }
}

start();
