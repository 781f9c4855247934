"""The real local stack, signed-in callers, and the check of every answer against the contract.

`local-stack` (from `LOCAL_STACK_BIN`, else `$CARGO_TARGET_DIR/debug/local-stack`, else
`target/debug/local-stack`) is started once for the session from the repository's root, on a
free port of 127.0.0.1, with the template's defaults for the quota (`MAX_JOBS_PER_MINUTE=30`),
the revocation check (`COGNITO_REVOCATION_CHECK=true`) and budgets (none), and stopped at the
end. Its offline model writes 40 words a second (local-stack's default), so its jobs finish
within a second. When selected tests need jobs that stay unfinished for a while, more stacks
are started alongside the first (so that all boot at once): the slow stack, whose model answers
after `SLOW_MODEL_MS` (cancellation, long-polls), the streaming stack, whose model writes
`STREAM_WORDS_PER_SECOND` words a second (text that grows while the job runs), and the budget
stack: every user's budgets set (`BUDGET_TOKENS_PER_DAY`, a few small jobs; and a generous
`BUDGET_USD_PER_MONTH`), with the slow stack's model, so that the jobs a test submits keep
their reservations for `SLOW_MODEL_MS` while it fills a budget or cancels one. Every answer a
test gets through `Caller` is validated against `docs/openapi.yaml` with openapi-core: status,
headers and body.
"""

import copy
import functools
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid

import pytest
import requests
import yaml
from openapi_core import OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse

ROOT = pathlib.Path(__file__).resolve().parents[2]
SPEC_PATH = ROOT / "docs" / "openapi.yaml"
DEMO_EMAIL = "demo@example.com"
DEMO_PASSWORD = "Demo-Password-2026!"
# The template's default, so that the quota's 429 can be provoked; every test but the quota's
# submits far fewer jobs than this in a minute.
JOBS_PER_MINUTE = 30
# The functions' settings a developer's shell may hold: the stack gets none of them, so that the
# tests meet the defaults they expect (MAX_PROMPT_CHARS 20000, MAX_OUTPUT_TOKENS 4096, …).
FUNCTION_SETTINGS = {
    "MODEL_ID",
    "ALLOWED_MODEL_IDS",
    "MAX_PROMPT_CHARS",
    "MAX_OUTPUT_TOKENS",
    "JOB_TTL_DAYS",
    "ALLOWED_ORIGIN",
    "COGNITO_REVOCATION_CHECK",
    "MAX_JOBS_PER_MINUTE",
    "MAX_ATTEMPTS",
    "RETRY_BASE_SECONDS",
    "RETRY_MAX_SECONDS",
    "BUDGET_TOKENS_PER_DAY",
    "BUDGET_USD_PER_MONTH",
    "MODEL_PRICES",
    "STREAM_FLUSH_MS",
}
# The slow stack's model latency: long enough that a job is reliably still running (and the
# next one still queued, the local worker taking one batch at a time) while a test cancels it.
SLOW_MODEL_MS = 2000
# The streaming stack's pace: a word every 100 ms, faster than its worker flushes
# (STREAM_FLUSH_MS, set to 250 there; 2000 by default), so that a running job's text grows
# over several flushes of two or three words each, and a cancellation is noticed within one.
STREAM_WORDS_PER_SECOND = 10
STREAM_FLUSH_MS = 250
# The budget stack's defaults for every user: a day of 600 tokens holds the worst case of three
# jobs of a short prompt and max_tokens 100 (each the prompt's bytes + 64 + 100, about 180),
# not four; a month of $5 holds thousands of them (so the day's budget is the one they meet).
BUDGET_TOKENS_PER_DAY = 600
BUDGET_USD_PER_MONTH = "5"
START_TIMEOUT_S = 120
REQUEST_TIMEOUT_S = 30


def local_stack_binary() -> pathlib.Path:
    if os.environ.get("LOCAL_STACK_BIN"):
        return pathlib.Path(os.environ["LOCAL_STACK_BIN"]).resolve()
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
    if not target.is_absolute():
        target = ROOT / target
    return target / "debug" / "local-stack"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Stack:
    """One running `local-stack`, its output in files (so that no pipe ever fills up)."""

    def __init__(self, binary: pathlib.Path, env: dict, args: tuple = (), wait: bool = True):
        if not binary.is_file():
            pytest.fail(
                f"no local-stack binary at {binary}: build it (cargo build --workspace --bins) "
                "or set LOCAL_STACK_BIN"
            )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.logs = pathlib.Path(tempfile.mkdtemp(prefix="contract-stack-"))
        self._stdout = open(self.logs / "stdout.log", "wb")
        self._stderr = open(self.logs / "stderr.log", "wb")
        self.process = subprocess.Popen(
            [str(binary), "--port", str(self.port), *args],
            cwd=ROOT,
            env={
                **{
                    name: value
                    for name, value in os.environ.items()
                    if name not in FUNCTION_SETTINGS and not name.startswith("AWS_ENDPOINT_URL")
                },
                **env,
            },
            stdin=subprocess.DEVNULL,
            stdout=self._stdout,
            stderr=self._stderr,
            # Its own process group: moto and its wrapper shell are stopped with it.
            start_new_session=True,
        )
        self._ready = False
        if wait:
            self.wait_until_ready()

    def output(self) -> str:
        return "".join(
            (self.logs / name).read_text(errors="replace") for name in ("stderr.log", "stdout.log")
        )

    def exports(self) -> dict:
        """The settings the stack prints for the AWS CLI (its `export NAME=value` lines):
        AWS_ENDPOINT_URL (its moto), JOBS_TABLE, …"""
        settings = {}
        for line in (self.logs / "stderr.log").read_text(errors="replace").splitlines():
            if line.strip().startswith("export "):
                for assignment in line.split()[1:]:
                    name, _, value = assignment.partition("=")
                    settings[name] = value
        return settings

    def dynamodb(self):
        """A boto3 DynamoDB client of the stack's moto (the operator's view of its tables)."""
        import boto3  # moto[server]'s dependency: in the tests' venv

        settings = self.exports()
        return boto3.client(
            "dynamodb",
            endpoint_url=settings["AWS_ENDPOINT_URL"],
            region_name=settings["AWS_REGION"],
            aws_access_key_id=settings["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=settings["AWS_SECRET_ACCESS_KEY"],
        )

    def wait_until_ready(self):
        if self._ready:
            return
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            stderr = (self.logs / "stderr.log").read_text(errors="replace")
            if any(line.startswith("Ready in") for line in stderr.splitlines()):
                self._ready = True
                return
            if self.process.poll() is not None:
                self.stop()
                pytest.fail(f"local-stack exited with {self.process.returncode}:\n{self.output()}")
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"local-stack was not ready within {START_TIMEOUT_S} s:\n{self.output()}")

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        # Whatever of the group is left (moto, its wrapper), started by this process only.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait(timeout=15)
        self._stdout.close()
        self._stderr.close()


class Contract:
    """docs/openapi.yaml, and the validation of real exchanges against it with openapi-core."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        self.spec = yaml.safe_load(path.read_text())
        self.openapi = OpenAPI.from_file_path(str(path))
        # (path template, method) -> statuses seen, for the coverage test.
        self.seen: dict[tuple[str, str], set[int]] = {}
        # (path template, method, status) -> the (lower-case) response headers seen with it.
        self.seen_headers: dict[tuple[str, str, int], set[str]] = {}

    @functools.lru_cache(maxsize=None)
    def _with_operation(self, path: str, method: str, status: str, response: str) -> OpenAPI:
        """The spec plus one operation answering `status` with `components/responses/<response>`:
        for exchanges that no documented operation covers (an unknown path, a method a path
        does not answer), so that they are still checked against the spec's own components."""
        spec = copy.deepcopy(self.spec)
        item = spec["paths"].setdefault(self.template_of(path) or path, {})
        item[method] = {
            "security": [],
            "responses": {status: {"$ref": f"#/components/responses/{response}"}},
        }
        return OpenAPI.from_dict(spec)

    def template_of(self, path: str) -> str | None:
        for template in self.spec["paths"]:
            pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
            if re.match(pattern, path):
                return template
        return None

    def validate(self, response: requests.Response, as_response: str | None = None):
        """Raises AssertionError, with the reasons, unless `response` is what the spec says
        for its request. `as_response` names a `components/responses` entry for exchanges
        outside the documented operations (an unknown path, a method a path does not answer)."""
        request = RequestsOpenAPIRequest(response.request)
        try:
            self.check(request, RequestsOpenAPIResponse(response), as_response)
        except AssertionError as error:
            raise AssertionError(
                f"{response.request.method} {response.request.path_url} → {response.status_code} "
                f"does not match docs/openapi.yaml: {error}\n"
                f"headers: {dict(response.headers)}\nbody: {response.text[:2000]}"
            ) from None
        template = self.template_of(request.path)
        if template and as_response is None:
            self.seen.setdefault((template, request.method), set()).add(response.status_code)
            self.seen_headers.setdefault(
                (template, request.method, response.status_code), set()
            ).update(name.lower() for name in response.headers)

    def check(self, request, response, as_response: str | None = None):
        """openapi-core's response validation of one exchange (protocol objects: the
        requests wrappers, or openapi_core.testing's mocks); AssertionError with the reasons."""
        if as_response is None:
            openapi = self.openapi
        else:
            openapi = self._with_operation(
                request.path, request.method, str(response.status_code), as_response
            )
        try:
            openapi.validate_response(request, response)
        except Exception as error:  # openapi-core's errors nest their reasons
            raise AssertionError(explain(error)) from None

    def validate_request(self, prepared: requests.PreparedRequest):
        """Raises openapi-core's error if the spec refuses this request."""
        self.openapi.validate_request(RequestsOpenAPIRequest(prepared))


def explain(error: BaseException) -> str:
    """openapi-core's error, its causes and its JSON Schema errors, as one line each."""
    lines = []
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        lines.append(f"{type(error).__name__}: {error}")
        for schema_error in getattr(error, "schema_errors", None) or []:
            where = "/".join(str(part) for part in schema_error.absolute_path) or "(root)"
            lines.append(f"  at {where}: {schema_error.message}")
        error = error.__cause__
    return "\n".join(lines)


class Caller:
    """A signed-in user (or nobody) talking to the stack from the web UI's origin. Every
    answer is validated against the contract before a test sees it."""

    def __init__(self, stack: Stack, contract: Contract, token: str | None, email: str | None):
        self.stack = stack
        self.contract = contract
        self.token = token
        self.email = email

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body=None,
        data=None,
        headers: dict | None = None,
        as_response: str | None = None,
        validate: bool = True,
        cors: bool = True,
    ) -> requests.Response:
        all_headers = {"Origin": self.stack.url}
        if self.token:
            all_headers["Authorization"] = f"Bearer {self.token}"
        if json_body is not None or data is not None:
            all_headers["Content-Type"] = "application/json"
        all_headers.update(headers or {})
        body = json.dumps(json_body) if json_body is not None else data
        if isinstance(body, str):
            body = body.encode("utf-8")
        response = requests.request(
            method,
            self.stack.url + path,
            data=body,
            headers=all_headers,
            timeout=REQUEST_TIMEOUT_S,
            allow_redirects=False,
        )
        if validate:
            self.contract.validate(response, as_response)
        if cors:
            # The contract's CORS rule: an answer to a request from the allowed origin names it.
            assert response.headers.get("Access-Control-Allow-Origin") == self.stack.url, (
                f"{method} {path} → {response.status_code}: no CORS header for the allowed "
                f"origin: {dict(response.headers)}"
            )
        return response

    def get(self, path: str, **options) -> requests.Response:
        return self.request("GET", path, **options)

    def post(self, path: str, **options) -> requests.Response:
        return self.request("POST", path, **options)

    def submit(self, body=None, **options) -> requests.Response:
        return self.post("/generate", json_body=body or {"prompt": "Hello"}, **options)


def cognito(stack: Stack, action: str, body: dict) -> dict:
    """One call of Cognito's JSON API through the stack's same-origin proxy, as the web UI."""
    response = requests.post(
        f"{stack.url}/cognito",
        headers={
            "X-Amz-Target": f"AWSCognitoIdentityProviderService.{action}",
            "Content-Type": "application/x-amz-json-1.1",
        },
        data=json.dumps(body),
        timeout=REQUEST_TIMEOUT_S,
    )
    assert response.status_code == 200, f"Cognito {action}: {response.status_code} {response.text}"
    return response.json()


def sign_in(stack: Stack, client_id: str, email: str, password: str) -> dict:
    answer = cognito(
        stack,
        "InitiateAuth",
        {
            "AuthFlow": "USER_PASSWORD_AUTH",
            "ClientId": client_id,
            "AuthParameters": {"USERNAME": email, "PASSWORD": password},
        },
    )
    return answer["AuthenticationResult"]


@pytest.fixture(scope="session")
def contract() -> Contract:
    return Contract(SPEC_PATH)


# As the template deploys it: a quota per caller, and signed-out tokens refused.
TEMPLATE_SETTINGS = {
    "MAX_JOBS_PER_MINUTE": str(JOBS_PER_MINUTE),
    "COGNITO_REVOCATION_CHECK": "true",
}


@pytest.fixture(scope="session")
def stacks(request):
    """The session's stacks, by name, each started at most once and stopped at the end."""
    running: dict[str, Stack] = {}

    def start(name: str, args: tuple = (), wait: bool = True, env: dict | None = None) -> Stack:
        if name not in running:
            settings = {**TEMPLATE_SETTINGS, **(env or {})}
            running[name] = Stack(local_stack_binary(), settings, args, wait=False)
        if wait:
            running[name].wait_until_ready()
        return running[name]

    yield start
    for name, stack in running.items():
        stack.stop()
        # The stack's log (one line per request and per job) is kept only when a test failed.
        if request.session.testsfailed:
            print(f"\nlocal-stack's log ({name}): {stack.logs}")
        else:
            shutil.rmtree(stack.logs, ignore_errors=True)


SLOW_MODEL = ("--latency-ms", str(SLOW_MODEL_MS), "--words-per-second", "0")
# The other stacks: their name, their fixture, their arguments and their settings.
OTHER_STACKS = {
    # Its model's answer comes all at once, after SLOW_MODEL_MS.
    "slow": ("slow_stack", SLOW_MODEL, {}),
    "stream": (
        "stream_stack",
        ("--words-per-second", str(STREAM_WORDS_PER_SECOND)),
        {"STREAM_FLUSH_MS": str(STREAM_FLUSH_MS)},
    ),
    # Every user's budgets, and the slow model.
    "budget": (
        "budget_stack",
        SLOW_MODEL,
        {
            "BUDGET_TOKENS_PER_DAY": str(BUDGET_TOKENS_PER_DAY),
            "BUDGET_USD_PER_MONTH": BUDGET_USD_PER_MONTH,
        },
    ),
}


def other_stack(stacks, name: str) -> Stack:
    _, args, env = OTHER_STACKS[name]
    return stacks(name, args, env=env)


@pytest.fixture(scope="session")
def stack(request, stacks):
    # The other stacks boot alongside when a selected test will need them.
    for name, (fixture, args, env) in OTHER_STACKS.items():
        if any(fixture in item.fixturenames for item in request.session.items):
            stacks(name, args, wait=False, env=env)
    return stacks("main")


@pytest.fixture(scope="session")
def slow_stack(stacks):
    """A second stack whose model answers after SLOW_MODEL_MS (all at once), and as the
    template deploys it otherwise: its jobs stay queued or running long enough to be
    cancelled."""
    return other_stack(stacks, "slow")


@pytest.fixture(scope="session")
def stream_stack(stacks):
    """A third stack whose offline model writes STREAM_WORDS_PER_SECOND words a second, and
    as the template deploys it otherwise: a running job's output grows over several flushes."""
    return other_stack(stacks, "stream")


@pytest.fixture(scope="session")
def budget_stack(stacks):
    """A fourth stack with every user's budgets (BUDGET_TOKENS_PER_DAY tokens a UTC day,
    $BUDGET_USD_PER_MONTH a UTC month) and the slow stack's model: a job holds its
    reservation for SLOW_MODEL_MS at least, and jobs submitted meanwhile stay queued."""
    return other_stack(stacks, "budget")


@pytest.fixture(scope="session")
def web_config(stack) -> dict:
    response = requests.get(f"{stack.url}/config.json", timeout=REQUEST_TIMEOUT_S)
    response.raise_for_status()
    return response.json()


@pytest.fixture(scope="session")
def demo_tokens(stack, web_config) -> dict:
    return sign_in(stack, web_config["userPoolClientId"], DEMO_EMAIL, DEMO_PASSWORD)


@pytest.fixture(scope="session")
def demo(stack, contract, demo_tokens) -> Caller:
    return Caller(stack, contract, demo_tokens["AccessToken"], DEMO_EMAIL)


def demo_of(stack: Stack, contract: Contract) -> Caller:
    """The demo user of `stack` (each stack has its own user pool)."""
    response = requests.get(f"{stack.url}/config.json", timeout=REQUEST_TIMEOUT_S)
    response.raise_for_status()
    client_id = response.json()["userPoolClientId"]
    tokens = sign_in(stack, client_id, DEMO_EMAIL, DEMO_PASSWORD)
    return Caller(stack, contract, tokens["AccessToken"], DEMO_EMAIL)


@pytest.fixture(scope="session")
def slow_demo(slow_stack, contract) -> Caller:
    """The demo user of the slow stack."""
    return demo_of(slow_stack, contract)


@pytest.fixture(scope="session")
def stream_demo(stream_stack, contract) -> Caller:
    """The demo user of the streaming stack."""
    return demo_of(stream_stack, contract)


@pytest.fixture(scope="session")
def anonymous(stack, contract) -> Caller:
    return Caller(stack, contract, None, None)


def sign_up(stack: Stack, contract: Contract) -> Caller:
    """Signs up, confirms (locally any code is accepted) and signs in a fresh user of `stack`."""
    response = requests.get(f"{stack.url}/config.json", timeout=REQUEST_TIMEOUT_S)
    response.raise_for_status()
    client_id = response.json()["userPoolClientId"]
    email = f"contract-{uuid.uuid4().hex[:12]}@example.com"
    password = "Contract-Password-2026!"
    cognito(
        stack,
        "SignUp",
        {
            "ClientId": client_id,
            "Username": email,
            "Password": password,
            "UserAttributes": [{"Name": "email", "Value": email}],
        },
    )
    cognito(
        stack,
        "ConfirmSignUp",
        {"ClientId": client_id, "Username": email, "ConfirmationCode": "123456"},
    )
    tokens = sign_in(stack, client_id, email, password)
    return Caller(stack, contract, tokens["AccessToken"], email)


@pytest.fixture(scope="session")
def new_user(stack, contract):
    """Makes a fresh user of the main stack."""
    return functools.partial(sign_up, stack, contract)


@pytest.fixture(scope="session")
def budget_user(budget_stack, contract):
    """Makes a fresh user of the budget stack: a whole day's and month's budget of its own."""
    return functools.partial(sign_up, budget_stack, contract)
