"""Cold-start and warm-invoke benchmark of the three Lambda binaries (api, status, worker).

Each release binary runs as Lambda runs it: under a minimal Lambda Runtime API that this
script serves, against moto (started here) and a Bedrock Converse stub (served here), with
the environment Lambda gives a function. Every address is 127.0.0.1.

    cargo build --release -p api -p status -p worker
    .venv/bin/python scripts/bench_functions.py [--invocations 200] [--cold-starts 10]
        [--bin-dir target/release] [--functions api,status,worker] [--json figures.json]
        [--tls] [--env NAME=VALUE ...]

With --tls, moto is served over HTTPS with a throwaway CA (given to the functions as
SSL_CERT_FILE), so that TLS handshakes count, as they do in Lambda: the first invocation
then pays for the TLS stack's start (its random number generator, the trust store).

Needs Python 3 and boto3 (moto's venv has both: ./scripts/test.sh or ./scripts/dev.sh make it).

For each function it prints:
  size          the binary's size (MiB); `stripped` says whether it carries a symbol table
  init wall     spawn → the binary's first GET /runtime/invocation/next (median of the cold starts)
  init CPU      CPU time of all the binary's threads at that moment (/proc/PID/task/*/schedstat)
  first invoke  wall time of the first invocation (event handed out → response posted)
  warm p50/p99  wall time of the next --invocations invocations, in one process
  CPU/warm      CPU time over those invocations / their number (read between two polls of
                /next, while the binary waits, as Lambda freezes it between invocations)
  peak RSS      VmHWM of that process after the warm invocations

Wall times include moto (one Python process) and this script's own HTTP servers, so compare
them between builds on one machine; CPU times and RSS are the binary's own, but grow when
the machine is busy: compare builds under the same load. moto answers every request with
`Connection: close`, so each SDK call opens a connection (and with --tls, makes a TLS
handshake), which AWS's kept-alive connections mostly spare a warm function.

Events: events/generate.json (api, a fresh Idempotency-Key each time, so each invocation
creates a job: 202), events/job-status.json (status, the job it names is seeded: 200),
events/worker-batch.json (worker, two queued jobs with fresh ids seeded before each
invocation, so each invocation calls the model twice: no batchItemFailures, both jobs
succeeded). Any other answer stops the benchmark with an error.
"""

import argparse
import json
import math
import os
import queue
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
import zlib
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
REGION = "us-east-1"
ACCOUNT = "123456789012"
TABLE = "bench-jobs"
QUEUE = "bench-jobs"
BUCKET = "bench-artifacts"
OWNER_INDEX = "owner-created_at-index"
FUNCTIONS = ("api", "status", "worker")
RUNTIME_PREFIX = "/2018-06-01/runtime"
CONVERSE_ANSWER = {
    "output": {"message": {"role": "assistant", "content": [{"text": "Queues wait in line."}]}},
    "stopReason": "end_turn",
    "usage": {"inputTokens": 5, "outputTokens": 7, "totalTokens": 12},
    "metrics": {"latencyMs": 1},
}


def event_message(event_type, payload):
    """One message of AWS's event-stream framing (what ConverseStream answers): a prelude
    (total and header lengths, their CRC32), string headers, the JSON payload, a CRC32."""
    headers = b""
    for name, value in ((":message-type", "event"), (":event-type", event_type),
                        (":content-type", "application/json")):
        headers += bytes([len(name)]) + name.encode() + b"\x07"
        headers += struct.pack(">H", len(value)) + value.encode()
    body = json.dumps(payload).encode()
    prelude = struct.pack(">II", 16 + len(headers) + len(body), len(headers))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + headers + body
    return message + struct.pack(">I", zlib.crc32(message))


CONVERSE_STREAM_ANSWER = b"".join([
    event_message("messageStart", {"role": "assistant"}),
    event_message("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Queues wait "}}),
    event_message("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "in line."}}),
    event_message("contentBlockStop", {"contentBlockIndex": 0}),
    event_message("messageStop", {"stopReason": "end_turn"}),
    event_message("metadata", {"usage": CONVERSE_ANSWER["usage"], "metrics": {"latencyMs": 1}}),
])
TIMEOUT = 60  # seconds for any one step: a start, an invocation, an answer


class BenchError(Exception):
    pass


# ---------------------------------------------------------------------------------------
# Measurements from /proc

def task_cpu_ns(pid):
    """CPU time (ns) of every live thread of `pid`: the first field of each task's schedstat."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return None
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as file:
                total += int(file.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # the thread ended meanwhile
    return total


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise BenchError(f"no VmHWM in /proc/{pid}/status")


def has_symbol_table(path):
    """Whether an ELF64 little-endian file has a .symtab section (i.e. is not stripped)."""
    with open(path, "rb") as file:
        data = file.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    names_offset, = struct.unpack_from("<Q", data, shoff + shstrndx * shentsize + 0x18)
    for index in range(shnum):
        header = shoff + index * shentsize
        name_at, kind = struct.unpack_from("<II", data, header)
        name = data[names_offset + name_at:data.index(b"\0", names_offset + name_at)]
        if kind == 2 or name == b".symtab":  # SHT_SYMTAB
            return True
    return False


# ---------------------------------------------------------------------------------------
# The Lambda Runtime API and the Bedrock stub, on one local HTTP server

class Session:
    """One process of a function binary, as the Runtime API sees it."""

    def __init__(self, function_name):
        self.pid = None                # set once spawned: the session is in place before that
        self.started = threading.Event()
        self.function_name = function_name
        self.events = queue.Queue()    # (request id, payload bytes) to hand out; None ends
        self.results = queue.Queue()   # (kind, request id, body bytes, handed out at, answered at)
        self.polls = []                # (arrived at, CPU ns) of every GET /next
        self.polled = threading.Condition()
        self.handed = {}               # request id → handed out at
        self.init_error = None

    def spawned(self, pid):
        self.pid = pid
        self.started.set()

    def wait_polls(self, count, timeout=TIMEOUT):
        with self.polled:
            if not self.polled.wait_for(lambda: len(self.polls) >= count, timeout):
                raise BenchError(f"the binary did not ask for invocation {count} within {timeout} s")
            return self.polls[count - 1]


class Harness(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__((HOST, 0), Handler)
        self.session = None
        self.converse_calls = 0
        self.lock = threading.Lock()

    def handle_error(self, request, client_address):
        # A binary stopped between two requests resets its connection: not an error here.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)

    @property
    def address(self):
        return f"{HOST}:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Without TCP_NODELAY, a body written after its headers waits for the client's delayed
    # ACK: 40 ms on Linux, which would swamp every figure.
    disable_nagle_algorithm = True
    server: Harness

    def log_message(self, *args):
        pass

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                chunk = self.rfile.read(size + 2)[:size]
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(chunk)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def answer(self, status, body, headers=(), content_type="application/json"):
        data = json.dumps(body).encode() if not isinstance(body, bytes) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def do_GET(self):
        session = self.server.session
        if self.path != f"{RUNTIME_PREFIX}/invocation/next" or session is None:
            return self.answer(404, {"errorMessage": f"unknown path {self.path}"})
        arrived = time.perf_counter()
        session.started.wait(TIMEOUT)  # a quick binary can ask before Popen has returned
        cpu = task_cpu_ns(session.pid)
        with session.polled:
            session.polls.append((arrived, cpu))
            session.polled.notify_all()
        item = session.events.get()
        if item is None:
            self.close_connection = True
            return
        request_id, payload = item
        deadline = int((time.time() + 300) * 1000)
        headers = [
            ("Lambda-Runtime-Aws-Request-Id", request_id),
            ("Lambda-Runtime-Deadline-Ms", str(deadline)),
            ("Lambda-Runtime-Invoked-Function-Arn",
             f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{session.function_name}"),
            ("Lambda-Runtime-Trace-Id",
             f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};"
             f"Parent={uuid.uuid4().hex[:16]};Sampled=0"),
        ]
        session.handed[request_id] = time.perf_counter()
        self.answer(200, payload, headers)

    def do_POST(self):
        body = self.body()
        answered = time.perf_counter()
        path = self.path
        if path.startswith("/model/") and path.endswith("/converse-stream"):
            with self.server.lock:
                self.server.converse_calls += 1
            return self.answer(200, CONVERSE_STREAM_ANSWER,
                               content_type="application/vnd.amazon.eventstream")
        if path.startswith("/model/") and path.endswith("/converse"):
            with self.server.lock:
                self.server.converse_calls += 1
            return self.answer(200, CONVERSE_ANSWER)
        session = self.server.session
        if session is None or not path.startswith(RUNTIME_PREFIX + "/"):
            return self.answer(404, {"message": f"unknown path {path}"})
        rest = path[len(RUNTIME_PREFIX) + 1:]
        if rest == "init/error":
            session.init_error = body.decode(errors="replace")
            session.results.put(("init-error", None, body, None, answered))
            return self.answer(202, {"status": "OK"})
        parts = rest.split("/")
        if len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response", "error"):
            request_id = parts[1]
            session.results.put((parts[2], request_id, body, session.handed.get(request_id), answered))
            return self.answer(202, {"status": "OK"})
        return self.answer(404, {"message": f"unknown path {path}"})


# ---------------------------------------------------------------------------------------
# Processes: moto and the function binaries, all stopped on exit

CHILDREN = []


def stop(process):
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(3)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def stop_all():
    while CHILDREN:
        stop(CHILDREN.pop())


def free_port():
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def make_certificates(workdir):
    """A throwaway CA and a certificate for 127.0.0.1 that it signs (RSA 2048, as AWS uses)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    import ipaddress

    now = datetime.now(timezone.utc)

    def certificate(subject, key, issuer, issuer_key, ca):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False), critical=True)
        else:
            builder = (builder
                       .add_extension(x509.SubjectAlternativeName(
                           [x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
                       .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                                      critical=False))
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench_functions test CA")])
    ca = certificate(ca_name, ca_key, ca_name, ca_key, True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server = certificate(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)]), key,
                         ca_name, ca_key, False)
    paths = {name: workdir / f"{name}.pem" for name in ("ca", "server", "server-key")}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["server"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths["server-key"].write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()))
    return paths


def start_moto(moto_server, log, certificates=None):
    port = free_port()
    command = [str(moto_server), "-H", HOST, "-p", str(port)]
    context = None
    if certificates:
        import ssl
        command += ["-c", str(certificates["server"]), "-k", str(certificates["server-key"])]
        context = ssl.create_default_context(cafile=str(certificates["ca"]))
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    CHILDREN.append(process)
    url = f"{'https' if certificates else 'http'}://{HOST}:{port}"
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"moto_server exited with {process.returncode}")
        try:
            urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=1, context=context).read()
            return url
        except OSError:
            time.sleep(0.1)
    raise BenchError(f"moto_server did not answer on {url} within {TIMEOUT} s")


# ---------------------------------------------------------------------------------------
# AWS resources and the records the events need

def timestamp(at):
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


class Resources:
    def __init__(self, endpoint, ca_file=None):
        import boto3  # from moto's venv
        session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                        region_name=REGION)
        verify = str(ca_file) if ca_file else None
        self.dynamodb = session.client("dynamodb", endpoint_url=endpoint, verify=verify)
        self.sqs = session.client("sqs", endpoint_url=endpoint, verify=verify)
        self.s3 = session.client("s3", endpoint_url=endpoint, verify=verify)
        self.dynamodb.create_table(
            TableName=TABLE,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": name, "AttributeType": "S"}
                                  for name in ("job_id", "owner", "created_at")],
            KeySchema=[{"AttributeName": "job_id", "KeyType": "HASH"}],
            GlobalSecondaryIndexes=[{
                "IndexName": OWNER_INDEX,
                "KeySchema": [{"AttributeName": "owner", "KeyType": "HASH"},
                              {"AttributeName": "created_at", "KeyType": "RANGE"}],
                "Projection": {"ProjectionType": "ALL"},
            }],
        )
        self.queue_url = self.sqs.create_queue(QueueName=QUEUE)["QueueUrl"]
        self.s3.create_bucket(Bucket=BUCKET)

    def job_item(self, job_id, owner, status):
        """A job record as shared/src/adapters/dynamodb.rs writes it."""
        now = datetime.now(timezone.utc)
        item = {
            "job_id": {"S": job_id},
            "owner": {"S": owner},
            "status": {"S": status},
            "model_id": {"S": "amazon.nova-micro-v1:0"},
            "prompt": {"S": "Write a haiku about queues."},
            "max_tokens": {"N": "256"},
            "temperature": {"N": "0.7"},
            "system": {"S": "You are a concise poet."},
            "created_at": {"S": timestamp(now)},
            "updated_at": {"S": timestamp(now)},
            "expires_at": {"N": str(int((now + timedelta(days=30)).timestamp()))},
            "attempts": {"N": "0"},
            "seq": {"N": "0"},
        }
        if status == "succeeded":
            item.update({
                "attempts": {"N": "1"},
                "seq": {"N": "2"},
                "completed_at": {"S": timestamp(now)},
                "output": {"S": "Queues wait in line."},
                "stop_reason": {"S": "end_turn"},
                "input_tokens": {"N": "5"},
                "output_tokens": {"N": "7"},
                "artifact_key": {"S": f"artifacts/{job_id}.json"},
            })
        return item

    def put_jobs(self, items):
        self.dynamodb.batch_write_item(RequestItems={TABLE: [{"PutRequest": {"Item": item}}
                                                             for item in items]})

    def statuses(self, job_ids):
        answer = self.dynamodb.batch_get_item(RequestItems={TABLE: {
            "Keys": [{"job_id": {"S": job_id}} for job_id in job_ids], "ConsistentRead": True}})
        return {item["job_id"]["S"]: item["status"]["S"] for item in answer["Responses"][TABLE]}


class Workload:
    """Makes each invocation's event (seeding what it needs) and checks its answer."""

    def __init__(self, function, resources, harness):
        self.function = function
        self.resources = resources
        self.harness = harness
        self.event = json.loads((ROOT / "events" / {
            "api": "generate.json", "status": "job-status.json", "worker": "worker-batch.json",
        }[function]).read_text())
        if function == "status":
            claims = self.event["requestContext"]["authorizer"]["jwt"]["claims"]
            job_id = self.event["pathParameters"]["id"]
            resources.put_jobs([resources.job_item(job_id, claims["sub"], "succeeded")])
        self.pending = None

    def next_event(self):
        event = json.loads(json.dumps(self.event))
        if self.function == "api":
            event["headers"]["idempotency-key"] = f"bench-{uuid.uuid4()}"
        elif self.function == "worker":
            ids = [str(uuid.uuid4()) for _ in event["Records"]]
            self.resources.put_jobs([self.resources.job_item(job_id, "bench-owner", "queued")
                                     for job_id in ids])
            for record, job_id in zip(event["Records"], ids):
                record["body"] = json.dumps({"job_id": job_id})
                record["messageId"] = str(uuid.uuid4())
            self.pending = (ids, self.harness.converse_calls)
        return json.dumps(event).encode()

    def check(self, kind, body):
        if kind != "response":
            raise BenchError(f"{self.function} answered with an {kind}: {body[:500]!r}")
        answer = json.loads(body)
        if self.function in ("api", "status"):
            expected = 202 if self.function == "api" else 200
            if answer.get("statusCode") != expected:
                raise BenchError(f"{self.function} answered {answer.get('statusCode')}, "
                                 f"not {expected}: {body[:500]!r}")
        else:
            if answer.get("batchItemFailures"):
                raise BenchError(f"worker reported failures: {body[:500]!r}")
            ids, calls_before = self.pending
            calls = self.harness.converse_calls - calls_before
            if calls != len(ids):
                raise BenchError(f"worker made {calls} model calls for {len(ids)} jobs")
            statuses = self.resources.statuses(ids)
            if set(statuses.values()) != {"succeeded"} or len(statuses) != len(ids):
                raise BenchError(f"worker left the jobs {statuses}")


# ---------------------------------------------------------------------------------------
# One function: cold starts, then warm invocations in the first process

def lambda_environment(function, harness, moto_url, resources, bin_dir):
    """What Lambda sets for a provided.al2023 function, plus the function's own settings."""
    name = f"bench-{function}"
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "TZ": ":UTC",
        "LAMBDA_TASK_ROOT": str(bin_dir),
        "LAMBDA_RUNTIME_DIR": str(bin_dir),
        "_HANDLER": "bootstrap",
        "AWS_LAMBDA_RUNTIME_API": harness.address,
        "AWS_LAMBDA_FUNCTION_NAME": name,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{name}",
        "AWS_LAMBDA_LOG_STREAM_NAME": f"2026/01/01/[$LATEST]{uuid.uuid4().hex}",
        "AWS_LAMBDA_LOG_FORMAT": "JSON",
        "AWS_LAMBDA_LOG_LEVEL": "INFO",
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_ENDPOINT_URL": moto_url,
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": f"http://{harness.address}",
        "JOBS_TABLE": TABLE,
        "JOBS_QUEUE_URL": resources.queue_url,
        "ARTIFACTS_BUCKET": BUCKET,
    }


def percentile(values, share):
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def invoke(session, payload):
    request_id = str(uuid.uuid4())
    session.events.put((request_id, payload))
    try:
        kind, answered_id, body, handed, answered = session.results.get(timeout=TIMEOUT)
    except queue.Empty:
        raise BenchError(f"no answer within {TIMEOUT} s") from None
    if kind == "init-error":
        raise BenchError(f"init error: {body[:500]!r}")
    if answered_id != request_id or handed is None:
        raise BenchError(f"answer for {answered_id}, expected {request_id}")
    return kind, body, (answered - handed) * 1000


def log_tail(path, lines=15):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def bench_function(function, options, harness, moto_url, resources, workdir):
    binary = options.bin_dir / function
    if not binary.is_file():
        raise BenchError(f"{binary} not found: build with `cargo build --release -p {function}`"
                         " or give --bin-dir")
    workload = Workload(function, resources, harness)
    environment = lambda_environment(function, harness, moto_url, resources, options.bin_dir)
    environment.update(options.env)
    figures = {
        "binary": str(binary),
        "size_bytes": binary.stat().st_size,
        "stripped": not has_symbol_table(binary),
        "init_wall_ms": [], "init_cpu_ms": [], "first_invoke_ms": [], "first_invoke_cpu_ms": [],
    }
    for cold in range(options.cold_starts):
        log_path = workdir / f"{function}-{cold}.log"
        session = Session(environment["AWS_LAMBDA_FUNCTION_NAME"])
        harness.session = session
        with open(log_path, "wb") as log:
            spawned = time.perf_counter()
            process = subprocess.Popen([str(binary)], env=environment, cwd=str(options.bin_dir),
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        CHILDREN.append(process)
        session.spawned(process.pid)
        try:
            deadline = time.monotonic() + TIMEOUT
            while True:
                with session.polled:
                    if session.polled.wait_for(lambda: session.polls, 0.05):
                        break
                if process.poll() is not None or session.init_error or time.monotonic() > deadline:
                    raise BenchError(
                        f"{function} did not ask for an invocation (exit code {process.returncode}, "
                        f"init error {session.init_error!r})\n{log_tail(log_path)}")
            polled_at, init_cpu = session.polls[0]
            figures["init_wall_ms"].append((polled_at - spawned) * 1000)
            figures["init_cpu_ms"].append(init_cpu / 1e6)

            kind, body, wall = invoke(session, workload.next_event())
            workload.check(kind, body)
            figures["first_invoke_ms"].append(wall)
            figures["first_invoke_cpu_ms"].append((session.wait_polls(2)[1] - init_cpu) / 1e6)

            if cold == 0:
                walls = []
                for _ in range(options.invocations):
                    kind, body, wall = invoke(session, workload.next_event())
                    workload.check(kind, body)
                    walls.append(wall)
                first_cpu = session.polls[1][1]
                last_cpu = session.wait_polls(options.invocations + 2)[1]
                figures["warm_p50_ms"] = statistics.median(walls)
                figures["warm_p99_ms"] = percentile(walls, 0.99)
                figures["warm_cpu_ms"] = (last_cpu - first_cpu) / 1e6 / options.invocations
                figures["peak_rss_mib"] = peak_rss_kib(process.pid) / 1024
                figures["threads"] = len(os.listdir(f"/proc/{process.pid}/task"))
        except BenchError as error:
            raise BenchError(f"{function}: {error}\n--- its log:\n{log_tail(log_path)}") from None
        finally:
            harness.session = None
            session.events.put(None)
            stop(process)
            CHILDREN.remove(process)
    for name in ("init_wall_ms", "init_cpu_ms", "first_invoke_ms", "first_invoke_cpu_ms"):
        figures[name] = {"median": statistics.median(figures[name]), "min": min(figures[name]),
                         "max": max(figures[name]), "all": figures[name]}
    return figures


# ---------------------------------------------------------------------------------------

def table(results, options):
    columns = [
        ("function", lambda f: f["name"], "{}"),
        ("size MiB", lambda f: f["size_bytes"] / 2**20, "{:.2f}"),
        ("init wall ms", lambda f: f["init_wall_ms"]["median"], "{:.1f}"),
        ("init CPU ms", lambda f: f["init_cpu_ms"]["median"], "{:.2f}"),
        ("(min–max)", lambda f: f"{f['init_cpu_ms']['min']:.2f}–{f['init_cpu_ms']['max']:.2f}", "{}"),
        ("1st invoke ms", lambda f: f["first_invoke_ms"]["median"], "{:.1f}"),
        ("1st inv. CPU ms", lambda f: f["first_invoke_cpu_ms"]["median"], "{:.2f}"),
        ("warm p50 ms", lambda f: f["warm_p50_ms"], "{:.2f}"),
        ("warm p99 ms", lambda f: f["warm_p99_ms"], "{:.2f}"),
        ("CPU/warm ms", lambda f: f["warm_cpu_ms"], "{:.3f}"),
        ("peak RSS MiB", lambda f: f["peak_rss_mib"], "{:.1f}"),
    ]
    rows = [[name for name, _, _ in columns]]
    for figures in results:
        rows.append([form.format(value(figures)) for _, value, form in columns])
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = ["  ".join(cell.rjust(width) if i else cell.ljust(width)
                       for i, (cell, width) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    notes = [f"{options.cold_starts} cold starts (medians), {options.invocations} warm invocations"
             + (", moto over HTTPS" if options.tls else "")]
    unstripped = [f["name"] for f in results if not f["stripped"]]
    if unstripped:
        notes.append(f"not stripped: {', '.join(unstripped)}")
    return "\n".join(lines + [""] + notes)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    target = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
    parser.add_argument("--bin-dir", type=Path, default=target / "release",
                        help="where the release binaries are (default: %(default)s)")
    parser.add_argument("--invocations", type=int, default=200, help="warm invocations (default 200)")
    parser.add_argument("--cold-starts", type=int, default=10, help="cold starts (default 10)")
    parser.add_argument("--functions", default=",".join(FUNCTIONS),
                        help="comma-separated subset of api,status,worker")
    parser.add_argument("--moto-server", type=Path, default=Path(sys.executable).parent / "moto_server",
                        help="moto_server to start (default: next to this Python)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures to FILE")
    parser.add_argument("--tls", action="store_true",
                        help="serve moto over HTTPS (a throwaway CA, given to the functions as "
                             "SSL_CERT_FILE), so that TLS handshakes count too")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="add (or override) a variable of the functions' environment")
    options = parser.parse_args()
    functions = [name.strip() for name in options.functions.split(",") if name.strip()]
    if not functions or set(functions) - set(FUNCTIONS):
        parser.error(f"--functions: choose among {', '.join(FUNCTIONS)}")
    if options.invocations < 1 or options.cold_starts < 1:
        parser.error("--invocations and --cold-starts must be at least 1")
    if not options.moto_server.exists():
        parser.error(f"{options.moto_server} not found: run this with moto's venv Python "
                     "(.venv/bin/python) or give --moto-server")
    options.bin_dir = options.bin_dir.resolve()
    try:
        options.env = dict(item.split("=", 1) for item in options.env)
    except ValueError:
        parser.error("--env takes NAME=VALUE")

    def on_signal(number, _frame):
        raise SystemExit(128 + number)

    for number in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, on_signal)

    harness = Harness()
    threading.Thread(target=harness.serve_forever, daemon=True).start()
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-functions-") as workdir:
            workdir = Path(workdir)
            certificates = make_certificates(workdir) if options.tls else None
            if certificates:
                # The functions trust the test CA alone: SSL_CERT_FILE is the standard way.
                options.env.setdefault("SSL_CERT_FILE", str(certificates["ca"]))
            with open(workdir / "moto.log", "wb") as moto_log:
                moto_url = start_moto(options.moto_server, moto_log, certificates)
            resources = Resources(moto_url, certificates and certificates["ca"])
            for function in functions:
                print(f"{function}: {options.cold_starts} cold starts, "
                      f"{options.invocations} warm invocations …", file=sys.stderr, flush=True)
                figures = bench_function(function, options, harness, moto_url, resources, workdir)
                figures["name"] = function
                results.append(figures)
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        stop_all()
        harness.shutdown()

    print(table(results, options))
    if options.json:
        options.json.write_text(json.dumps({
            "cold_starts": options.cold_starts,
            "invocations": options.invocations,
            "functions": {f.pop("name"): f for f in results},
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        stop_all()
        sys.exit(130)
