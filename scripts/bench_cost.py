"""The AWS cost of one job, counted call by call (issue 15).

Starts moto (as local/src/moto.rs does), a counting proxy in front of it, and the local stack
aimed at the proxy; then runs one job at a time through the real API and counts every AWS
call the pipeline makes for it, by service and operation, with the capacity units DynamoDB
would bill for it (from item sizes), the SQS and S3 requests, the Lambda invocations and
GB-seconds of the api and status functions, the API Gateway requests, and prices them from
the table PRICES below. Everything listens and talks on 127.0.0.1 only.

    .venv/bin/python scripts/bench_cost.py [--label before|after] [--json FILE]
        [--shapes small,medium,large] [--scenarios unwatched,long-poll,push] [--repeat N]
        [--stack-bin PATH] [--words-per-second 40] [--env NAME=VALUE ...] [--stack-arg ARG ...]
        [--logs DIR]
    .venv/bin/python scripts/bench_cost.py --prices       # the price table, and exit
    .venv/bin/python scripts/bench_cost.py --self-test    # the item-size and splice checks, and exit

Job shapes (the offline model echoes the prompt after an 18-word preamble, one word = one
token, cut at max_tokens; local/src/converse.rs, offline_reply):
    small   50-word prompt (~0.35 KB), max_tokens 68:  a 68-token answer (18 + 50 words)
    medium  400-word prompt (~2.9 KB), max_tokens 418: a 418-token answer (18 + 400 words)
    large   2000-word prompt (~13 KB), max_tokens 512: a 512-token answer (cut)

Scenarios, each job alone, the counters reset right before its POST /generate and read once
it is terminal and the stack has been quiet for a moment (trailing tidy-ups included):
    unwatched  POST /generate; the job's status read straight from moto (uncounted) until it
               is terminal; then one GET /jobs/{id} through the API (counted: a client reads
               its answer once)
    long-poll  the same, plus a watcher that follows the job as the web UI does: one GET
               /jobs/{id}, then GET /jobs/{id}?wait=20&after=SEQ until the job is terminal;
               each request is one status-function invocation, held for its wall time
    push       the same, plus a watcher that follows the job by push, as a resuming client
               of the web UI does (docs/contract.md, "Live output by push"): one WebSocket to
               the stack's AppSync Events endpoint (config.json's events.realtime), opened
               right before the POST; a subscribe to the job's channel right after it (the
               subscribe handler's watch mark, an UpdateItem, is counted as the watcher's);
               one GET /jobs/{id} (one status invocation); then the text events until the job
               is terminal (read from moto, uncounted) and the stack's log says every event
               published on the channel was delivered. The events, spliced by offset onto the
               text that read returned, must give the job's final output exactly, or the run
               fails. Publishes and deliveries are checked against the stack's log ("events
               published" lines). Skipped, with a note, when the stack names no endpoint

What counts, and how:
  DynamoDB   capacity units as DynamoDB bills them, from item sizes (item_size): a write is
             ceil(max(item before, item after) / 1 KB) (the proxy reads the item straight
             from moto, uncounted, before and after it forwards the write, under one lock),
             twice that inside TransactWriteItems (a ConditionCheck there is billed as such a
             write of the item as it is: 2 x ceil(size / 1 KB)), and a write refused by its
             condition still costs its units; a read ceil(size / 4 KB), at least one unit,
             halved when eventually consistent, twice in TransactGetItems; a Query or Scan
             sums the items it returns. Writes to the global secondary indexes (from the
             table's description) are counted apart, never doubled: per index, an entry put
             or deleted is one write of ceil(projected size / 1 KB), a changed index key a
             delete plus a put, a changed projection one write, nothing when the projection
             is unchanged.
  SQS        every call, each 64 KB chunk of its payload one request, except ReceiveMessage
             polls that returned nothing: Lambda's event source polls whatever the jobs do,
             so they are listed apart and left out of the job's cost
  S3         requests by kind: PUT/COPY/POST/LIST, GET/HEAD and the rest, DELETE (free)
  Lambda     api (each POST) and status (each GET) invocations, GB-seconds = wall time of
             the HTTP request x 0.25 GB (MemorySize 256 in template.yaml); not the worker's
             time waiting on the model, which every design pays
  API GW     one HTTP API request per API request
  AppSync    Events: the worker's publishes (inbound) and their deliveries (outbound), from
             the stack's log, and the watcher's connect, subscribe and keep-alive messages,
             each an Event API operation per started 5 KB of its event (an upper bound: see
             APPSYNC_OPERATIONS); connection-minutes from the watcher's wall time connected,
             rounded up to whole minutes
  Cognito    counted and shown, never charged to the job (Cognito bills monthly users)
  tokens     the job's usage (GET /jobs/{id}) at the model's price: the yardstick

The local stack is started with --sweep-every 3600, so that the recovery sweep's queries
stay out of the counts, and one uncounted warm-up job runs first (the authorizers' JWKS
fetches, the day's and month's ledger items), followed by push when push is measured. Needs
Python 3 (the standard library only: the WebSocket client is the small one below) and moto
in .venv (./scripts/dev.sh or ./scripts/test.sh install it).
"""

import argparse
import atexit
import base64
import ctypes
import hashlib
import http.client
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"

# US East (N. Virginia) list prices in USD, as issue 15 quotes them from the services'
# pricing pages (aws.amazon.com/dynamodb/pricing/on-demand, /sqs/pricing, /s3/pricing,
# /lambda/pricing, /api-gateway/pricing, /appsync/pricing), written down here on
# 2026-12-07; the model's tokens as shared/prices.json has them (Amazon Bedrock on demand,
# published 2026-11-23; a note is printed if the two disagree). Check them before quoting.
PRICES = {
    "dynamodb_write_request_unit": 0.625 / 1e6,  # on demand; index writes priced the same
    "dynamodb_read_request_unit": 0.125 / 1e6,   # on demand
    "sqs_request": 0.40 / 1e6,                   # standard queue; each 64 KB chunk is a request
    "s3_put_copy_post_list_request": 0.005 / 1e3,  # S3 Standard
    "s3_get_and_other_request": 0.0004 / 1e3,      # S3 Standard: GET, HEAD, SELECT, ...
    "s3_delete_request": 0.0,                      # DELETE and CANCEL are free
    "lambda_request": 0.20 / 1e6,
    "lambda_gb_second": 0.0000166667,            # x86 (arm64 is 0.0000133334)
    "api_gateway_http_request": 1.00 / 1e6,      # HTTP API, first 300 million a month
    "appsync_events_operation": 1.00 / 1e6,      # Event API operations: publishes, deliveries
    "appsync_events_connection_minute": 0.08 / 1e6,
    "bedrock_input_token": 0.000035 / 1e3,       # amazon.nova-micro-v1:0 (shared/prices.json)
    "bedrock_output_token": 0.00014 / 1e3,
}
PRICED_MODEL = "amazon.nova-micro-v1:0"
LAMBDA_GB = 256 / 1024  # MemorySize of the api and status functions in template.yaml

# What AppSync Events bills as Event API operations. AWS's price list has the rate ("$1 per
# million Event API operations") and the AppSync pricing page $0.08 per million
# connection-minutes; what we could read of them does not say whether the connect, the
# subscribe and the keep-alives are operations too, nor whether a large message counts as
# several. So the bench counts every message of these kinds as an operation per started
# APPSYNC_METERED_BYTES of its payload (an upper bound; each costs $0.000001, and every event
# here is far smaller than 5 KB), and connection-minutes rounded up to whole minutes. The
# subscribe handler's DynamoDB write is counted at the proxy, like any other.
APPSYNC_OPERATIONS = ("publishes", "deliveries", "connects", "subscribes", "keep_alives")
APPSYNC_METERED_BYTES = 5 * 1024

# The offline model's preamble before the echoed prompt (local/src/converse.rs): 18 words
# with the default model id, so an answer of N prompt words is 18 + N tokens long.
PREAMBLE_WORDS = 18
SHAPES = {
    # name: (prompt words, prompt bytes aimed at, max_tokens, answer tokens expected)
    name: (words, size, max_tokens, min(PREAMBLE_WORDS + words, max_tokens))
    for name, words, size, max_tokens in (("small", 50, 350, 68), ("medium", 400, 2900, 418),
                                          ("large", 2000, 13000, 512))
}
SCENARIOS = ("unwatched", "long-poll", "push")
TERMINAL = {"succeeded", "failed", "cancelled"}
LONG_POLL_WAIT = 20      # seconds, as the web UI asks
QUIET_SECONDS = 1.5      # the stack is quiet once no AWS call (but queue polls) for this long
QUIET_LIMIT = 20         # seconds to wait for it
STACK_START_LIMIT = 120  # seconds


class BenchError(Exception):
    pass


# ---------------------------------------------------------------------------------------
# DynamoDB item sizes and capacity units
#
# DynamoDB's rules (developer guide, "DynamoDB item sizes and formats"): an item's size is
# the sum over its attributes of the name's UTF-8 length plus the value's size, where
#   S        the UTF-8 length
#   N        about 1 byte per two significant digits, plus 1 (leading and trailing zeros
#            trimmed); we add 1 more for a negative number, as DynamoDB's own examples do
#   B        the raw length (the wire carries it in base64)
#   BOOL     1; NULL 1
#   SS/NS/BS the sum of their members' sizes, as above
#   L, M     3 bytes, plus for each element its size and 1 byte (and, in a map, the
#            element's name)

def number_size(text):
    """Bytes DynamoDB counts for the number `text` (a decimal string, as on the wire)."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        return len(text)  # not a number after all: an upper bound
    digits = "".join(map(str, value.as_tuple().digits)).strip("0") or "0"
    return math.ceil(len(digits) / 2) + 1 + (1 if value < 0 else 0)


def value_size(value):
    """Bytes of one attribute value in DynamoDB's JSON shape, e.g. {"S": "abc"}."""
    (kind, data), = value.items()
    if kind == "S":
        return len(data.encode())
    if kind == "N":
        return number_size(data)
    if kind == "B":
        return len(base64.b64decode(data))
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(member.encode()) for member in data)
    if kind == "NS":
        return sum(number_size(member) for member in data)
    if kind == "BS":
        return sum(len(base64.b64decode(member)) for member in data)
    if kind == "L":
        return 3 + sum(value_size(element) + 1 for element in data)
    if kind == "M":
        return 3 + sum(len(name.encode()) + value_size(element) + 1 for name, element in data.items())
    raise ValueError(f"unknown DynamoDB type {kind}")


def item_size(item):
    """Bytes of an item (a map of attribute names to values); 0 for no item."""
    if not item:
        return 0
    return sum(len(name.encode()) + value_size(value) for name, value in item.items())


def write_units(size):
    """Write request units of one standard write of an item of `size` bytes: per 1 KB, at
    least 1 (a write of a missing item costs 1 too)."""
    return max(1, math.ceil(size / 1024))


def read_units(size, consistent):
    """Read request units of reading `size` bytes: per 4 KB, at least one 4 KB unit,
    halved when eventually consistent."""
    return max(1, math.ceil(size / 4096)) * (1.0 if consistent else 0.5)


def self_checks():
    """The size rules on hand-computed items, and the push watcher's splice; raises
    AssertionError on a mistake."""
    checks = [
        ({"job_id": {"S": "abc"}}, 6 + 3),
        ({"n": {"N": "123"}}, 1 + 3),             # 3 significant digits: 2 + 1
        ({"n": {"N": "1000"}}, 1 + 2),            # trailing zeros trimmed: 1 digit
        ({"n": {"N": "-12.50"}}, 1 + 4),          # 125: 2 + 1, and 1 for the sign
        ({"n": {"N": "0"}}, 1 + 2),
        ({"é": {"S": "ü"}}, 2 + 2),               # UTF-8 lengths
        ({"b": {"B": base64.b64encode(b"12345").decode()}}, 1 + 5),
        ({"t": {"BOOL": True}, "z": {"NULL": True}}, 2 + 2),
        ({"l": {"L": [{"S": "ab"}, {"N": "1"}]}}, 1 + 3 + (2 + 1) + (2 + 1)),
        ({"m": {"M": {"a": {"S": "x"}}}}, 1 + 3 + (1 + 1 + 1)),
        ({"m": {"M": {}}}, 1 + 3),
        ({"s": {"SS": ["ab", "cde"]}}, 1 + 5),
    ]
    for item, expected in checks:
        assert item_size(item) == expected, f"item_size({item}) = {item_size(item)}, not {expected}"
    assert write_units(0) == 1 and write_units(1024) == 1 and write_units(1025) == 2
    assert read_units(4096, True) == 1 and read_units(4097, False) == 1.0 and read_units(10, False) == 0.5
    # the push watcher's splice (offsets in bytes of UTF-8, per attempt)
    def event(attempt, offset, text):
        return {"attempt": attempt, "offset": offset, "text": text}

    read = {"attempts": 1, "output": "héllo"}  # 6 bytes
    assert splice_events(read, [event(1, 6, " you")]) == ("héllo you", None)
    assert splice_events(read, [event(1, 0, "héllo w"), event(1, 8, "orld")]) == ("héllo world", None)
    assert splice_events(read, [event(1, 7, "x")])[1] == event(1, 7, "x")  # a gap: one was missed
    assert splice_events(read, [event(2, 0, "new")]) == ("new", None)      # a new attempt starts anew
    assert splice_events({"attempts": 0, "output": ""}, [event(1, 0, "a"), event(1, 1, "b")]) == ("ab", None)


# ---------------------------------------------------------------------------------------
# What an AWS call is: service and operation, from the request alone

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authenticate",
              "proxy-authorization", "te", "trailer", "trailers", "transfer-encoding", "upgrade"}
TARGET_SERVICES = {"DynamoDB": "dynamodb", "AmazonSQS": "sqs",
                   "AWSCognitoIdentityProviderService": "cognito-idp"}
S3_PUT_CLASS = {"PutObject", "CopyObject", "UploadPart", "UploadPartCopy", "CreateMultipartUpload",
                "CompleteMultipartUpload", "ListObjects", "ListObjectsV2", "ListObjectVersions",
                "ListBuckets", "ListMultipartUploads", "ListParts", "CreateBucket", "PostObject"}
S3_FREE = {"DeleteObject", "DeleteObjects", "DeleteBucket", "AbortMultipartUpload"}


def classify(method, target, headers, body):
    """(service, operation) of a request to the emulator."""
    authorization = headers.get("Authorization", "")
    query = parse_qs(urlsplit(target).query, keep_blank_values=True)
    scope = re.search(r"Credential=[^/,]+/\d{8}/[^/]+/([^/]+)/aws4_request", authorization)
    service = scope.group(1) if scope else None
    if not service and "X-Amz-Credential" in query:  # a presigned URL
        service = query["X-Amz-Credential"][0].split("/")[3]
    amz_target = headers.get("X-Amz-Target", "")
    if amz_target:
        prefix, _, operation = amz_target.partition(".")
        service = service or TARGET_SERVICES.get(prefix.split("_")[0], prefix.lower())
        return service, operation
    path = urlsplit(target).path
    if not service:
        if path.endswith("/.well-known/jwks.json"):
            return "cognito-idp", "GetJWKS"
        if path.startswith("/moto-api"):
            return "moto", path
        service = "s3"  # what moto itself takes an unsigned request for
    action = query.get("Action")
    if not action and body and "x-www-form-urlencoded" in headers.get("Content-Type", ""):
        action = parse_qs(body.decode(errors="replace")).get("Action")
    if action:
        return service, action[0]
    if service == "s3":
        return service, s3_operation(method, headers.get("Host", ""), path, query, headers)
    return service, f"{method} {path}"


def s3_operation(method, host, path, query, headers):
    """The S3 operation of a REST request, path-style or virtual-hosted."""
    name = host.split(":")[0]
    parts = path.lstrip("/").split("/", 1)
    if re.fullmatch(r"[\d.]+|localhost|s3[.-].*", name):
        bucket, key = parts[0], (parts[1] if len(parts) > 1 else "")
    else:  # bucket.host
        bucket, key = name.split(".")[0], path.lstrip("/")
    if not bucket:
        return "ListBuckets" if method == "GET" else f"{method} /"
    if key:
        if method == "PUT":
            if "partNumber" in query:
                return "UploadPartCopy" if "x-amz-copy-source" in headers else "UploadPart"
            return "CopyObject" if "x-amz-copy-source" in headers else "PutObject"
        if method == "POST":
            if "uploads" in query:
                return "CreateMultipartUpload"
            return "CompleteMultipartUpload" if "uploadId" in query else "PostObject"
        if method == "DELETE":
            return "AbortMultipartUpload" if "uploadId" in query else "DeleteObject"
        if "uploadId" in query:
            return "ListParts"
        return {"GET": "GetObject", "HEAD": "HeadObject"}.get(method, f"{method}Object")
    subresource = next((name for name in query if name not in ("list-type", "prefix", "delimiter",
                        "max-keys", "continuation-token", "start-after", "encoding-type",
                        "fetch-owner", "marker")), None)
    if method == "POST" and "delete" in query:
        return "DeleteObjects"
    if subresource:
        verb = {"GET": "Get", "PUT": "Put", "DELETE": "Delete", "HEAD": "Head"}.get(method, method)
        return f"{verb}Bucket{subresource[:1].upper()}{subresource[1:]}"
    if method == "GET":
        return "ListObjectsV2" if query.get("list-type") == ["2"] else "ListObjects"
    return {"PUT": "CreateBucket", "DELETE": "DeleteBucket", "HEAD": "HeadBucket"}.get(method, f"{method}Bucket")


def is_watch_mark(operation, body):
    """Whether a DynamoDB call is the Event API's subscribe handler marking a job watched
    (docs/contract.md, "Watched jobs"): an UpdateItem that sets `watched_until` and nothing
    else. It is the push watcher's, not the job's."""
    if operation != "UpdateItem":
        return False
    try:
        payload = json.loads(body or b"{}")
    except ValueError:
        return False
    expression = payload.get("UpdateExpression") or ""
    names = payload.get("ExpressionAttributeNames") or {}
    for placeholder in sorted(names, key=len, reverse=True):  # #ab before #a
        expression = expression.replace(placeholder, names[placeholder])
    return re.fullmatch(r"\s*SET\s+watched_until\s*=\s*:\w+\s*", expression) is not None


def s3_class(operation):
    if operation in S3_FREE:
        return "delete"
    if operation in S3_PUT_CLASS or operation.startswith("PutBucket"):
        return "put"
    return "get"


# ---------------------------------------------------------------------------------------
# Uncounted calls straight to moto (never through the proxy)

class Emulator:
    def __init__(self, port, region="us-east-1"):
        self.port = port
        self.region = region

    def dynamodb(self, operation, payload):
        connection = http.client.HTTPConnection(HOST, self.port, timeout=30)
        try:
            connection.request("POST", "/", json.dumps(payload).encode(), {
                "Content-Type": "application/x-amz-json-1.0",
                "X-Amz-Target": f"DynamoDB_20120810.{operation}",
                # moto routes by the credential scope; it checks no signature
                "Authorization": f"AWS4-HMAC-SHA256 Credential=local/20260101/{self.region}/"
                                 "dynamodb/aws4_request, SignedHeaders=host, Signature=0",
            })
            response = connection.getresponse()
            body = json.loads(response.read() or b"{}")
        finally:
            connection.close()
        if response.status != 200:
            raise BenchError(f"DynamoDB {operation} (uncounted) answered {response.status}: {body}")
        return body

    def get_item(self, table, key):
        return self.dynamodb("GetItem", {"TableName": table, "Key": key, "ConsistentRead": True}).get("Item")


class Table:
    """What accounting needs of a table: its key and its global secondary indexes."""

    def __init__(self, description):
        self.name = description["TableName"]
        self.keys = [k["AttributeName"] for k in description["KeySchema"]]
        self.indexes = []
        for index in description.get("GlobalSecondaryIndexes") or []:
            projection = index.get("Projection", {})
            self.indexes.append({
                "name": index["IndexName"],
                "keys": [k["AttributeName"] for k in index["KeySchema"]],
                "type": projection.get("ProjectionType", "ALL"),
                "include": projection.get("NonKeyAttributes", []),
            })

    def key_of(self, item):
        return {name: item[name] for name in self.keys if name in item}

    def index_writes(self, before, after):
        """Write units of the table's indexes for one item going from `before` to `after`
        (None: absent): {index name: units}."""
        units = {}
        for index in self.indexes:
            def projected(item):
                if index["type"] == "ALL":
                    return item
                names = set(self.keys) | set(index["keys"])
                if index["type"] == "INCLUDE":
                    names |= set(index["include"])
                return {name: value for name, value in item.items() if name in names}

            was = before is not None and all(name in before for name in index["keys"])
            now = after is not None and all(name in after for name in index["keys"])
            count = 0
            if was and now:
                if any(before[name] != after[name] for name in index["keys"]):
                    # the entry moves: a delete of the old one, a put of the new one
                    count = write_units(item_size(projected(before))) + write_units(item_size(projected(after)))
                elif projected(before) != projected(after):
                    count = write_units(max(item_size(projected(before)), item_size(projected(after))))
            elif was:
                count = write_units(item_size(projected(before)))
            elif now:
                count = write_units(item_size(projected(after)))
            if count:
                units[index["name"]] = count
        return units


class Accountant:
    """DynamoDB's capacity units for each call, from the items before and after it."""

    WRITES = {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"}
    READS = {"GetItem", "BatchGetItem", "Query", "Scan", "TransactGetItems"}

    def __init__(self, emulator):
        self.emulator = emulator
        self.tables = {}
        self.tables_lock = threading.Lock()
        # One write at a time between its read before and its read after, so that two
        # writes never see each other's halves.
        self.write_lock = threading.Lock()

    def table(self, name):
        with self.tables_lock:
            if name not in self.tables:
                description = self.emulator.dynamodb("DescribeTable", {"TableName": name})["Table"]
                self.tables[name] = Table(description)
            return self.tables[name]

    def read(self, table, key):
        """The item as it is now (uncounted); None if it cannot be read, which then counts
        as no item (the write still goes through)."""
        try:
            return self.emulator.get_item(table.name, key)
        except (OSError, http.client.HTTPException, BenchError) as error:
            print(f"  note: could not read {key} for its accounting: {error}", file=sys.stderr)
            return None

    def handle(self, operation, request, forward):
        """Forwards the call (`forward()` → (status, headers, body)) and returns it with its
        units: {"read_units", "write_units", "index_write_units", "by_index", "refused"}."""
        try:
            payload = json.loads(request or b"{}")
        except ValueError:
            payload = {}
        if operation in self.WRITES:
            return self.write(operation, payload, forward)
        answer = forward()
        if operation in self.READS and answer[0] == 200:
            return answer, self.reads(operation, payload, json.loads(answer[2] or b"{}"))
        return answer, {}

    # --- writes

    def write_targets(self, operation, payload):
        """[(table, key, kind, new item or None, transactional)] for each item written."""
        targets = []
        if operation in ("PutItem", "UpdateItem", "DeleteItem"):
            table = self.table(payload["TableName"])
            item = payload.get("Item")
            key = table.key_of(item) if item else payload["Key"]
            targets.append((table, key, operation, item, False))
        elif operation == "BatchWriteItem":
            for name, requests in payload.get("RequestItems", {}).items():
                table = self.table(name)
                for request in requests:
                    if "PutRequest" in request:
                        item = request["PutRequest"]["Item"]
                        targets.append((table, table.key_of(item), "PutItem", item, False))
                    else:
                        targets.append((table, request["DeleteRequest"]["Key"], "DeleteItem", None, False))
        elif operation == "TransactWriteItems":
            kinds = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem",
                     "ConditionCheck": "ConditionCheck"}
            for entry in payload.get("TransactItems", []):
                (kind, part), = entry.items()
                table = self.table(part["TableName"])
                item = part.get("Item")
                key = table.key_of(item) if item else part["Key"]
                targets.append((table, key, kinds[kind], item, True))
        return targets

    def write(self, operation, payload, forward):
        try:
            targets = self.write_targets(operation, payload)
        except (KeyError, ValueError, BenchError):
            targets = []  # a malformed request: DynamoDB refuses it and bills nothing
        with self.write_lock:
            before = [self.read(table, key) for table, key, *_ in targets]
            answer = forward()
            after = [self.read(table, key) for table, key, *_ in targets]
        status, _, body = answer
        error = ""
        if status != 200:
            try:
                error = json.loads(body or b"{}").get("__type", "")
            except ValueError:
                pass
        # A write refused by its condition (or a transaction cancelled by one) still costs
        # its units; any other error (validation, throttling, a server error) costs none.
        refused = "ConditionalCheckFailed" in error or "TransactionCanceled" in error
        if status != 200 and not refused:
            return answer, {"error": error or status}
        units, index_units, sizes = 0, {}, []
        for (table, key, kind, new_item, transactional), old, now in zip(targets, before, after):
            if kind == "PutItem":
                size = max(item_size(old), item_size(new_item))
            elif kind == "UpdateItem":
                size = max(item_size(old), item_size(now))
            else:  # DeleteItem; ConditionCheck, billed as a write of the item as it is
                size = item_size(old)
            units += write_units(size) * (2 if transactional else 1)
            for name, count in table.index_writes(old, now).items():
                index_units[name] = index_units.get(name, 0) + count
            sizes.append({"kind": kind, "before": item_size(old), "after": item_size(now),
                          "billed_bytes": size, "transactional": transactional})
        return answer, {"write_units": units, "index_write_units": sum(index_units.values()),
                        "by_index": index_units, "refused": refused, "items": sizes}

    # --- reads

    def reads(self, operation, payload, result):
        if operation == "GetItem":
            item = result.get("Item")
            if item and ("ProjectionExpression" in payload or "AttributesToGet" in payload):
                # a read costs the whole item, whatever it returns
                item = self.emulator.get_item(payload["TableName"], payload["Key"]) or item
            return {"read_units": read_units(item_size(item), payload.get("ConsistentRead", False)),
                    "item_bytes": item_size(item)}
        if operation in ("Query", "Scan"):
            # The items as returned (after the request's projection and filter): close enough
            # for these calls, which project nothing away.
            size = sum(item_size(item) for item in result.get("Items", []))
            consistent = payload.get("ConsistentRead", False) and "IndexName" not in payload
            return {"read_units": read_units(size, consistent), "index": payload.get("IndexName"),
                    "item_bytes": size}
        if operation == "BatchGetItem":
            # Each key is read as a GetItem would be: a missing item costs the least unit;
            # keys left unprocessed cost nothing (they are asked again, and counted then).
            total, size = 0.0, 0
            for name, request in payload.get("RequestItems", {}).items():
                consistent = request.get("ConsistentRead", False)
                items = result.get("Responses", {}).get(name, [])
                unprocessed = len(result.get("UnprocessedKeys", {}).get(name, {}).get("Keys", []))
                missing = max(0, len(request.get("Keys", [])) - len(items) - unprocessed)
                total += sum(read_units(item_size(item), consistent) for item in items)
                total += missing * read_units(0, consistent)
                size += sum(item_size(item) for item in items)
            return {"read_units": total, "item_bytes": size}
        if operation == "TransactGetItems":
            return {"read_units": sum(2 * read_units(item_size(entry.get("Item")), True)
                                      for entry in result.get("Responses", []))}
        return {}


# ---------------------------------------------------------------------------------------
# The counting proxy

class Recorder:
    """Every call the proxy forwarded since the last reset."""

    def __init__(self):
        self.lock = threading.Lock()
        self.calls = []
        self.in_flight = 0        # calls in flight, queue polls left out
        self.last_activity = time.monotonic()
        self.started = time.monotonic()

    def reset(self):
        with self.lock:
            self.calls = []
            self.started = time.monotonic()

    def snapshot(self):
        with self.lock:
            return list(self.calls)

    def begin(self, is_poll):
        if not is_poll:
            with self.lock:
                self.in_flight += 1
                self.last_activity = time.monotonic()

    def end(self, record, is_poll):
        with self.lock:
            self.calls.append(record)
            if not is_poll:
                self.in_flight -= 1
                self.last_activity = time.monotonic()

    def wait_quiet(self, quiet=QUIET_SECONDS, limit=QUIET_LIMIT):
        """Waits until no call but a queue poll has been made for `quiet` seconds."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            with self.lock:
                idle = self.in_flight == 0 and time.monotonic() - self.last_activity >= quiet
            if idle:
                return True
            time.sleep(0.1)
        return False


class Proxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream_port, accountant, recorder):
        super().__init__((HOST, 0), ProxyHandler)
        self.upstream_port = upstream_port
        self.accountant = accountant
        self.recorder = recorder

    def handle_error(self, request, client_address):
        # A client that hangs up between two requests is not an error here.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)

    @property
    def port(self):
        return self.server_address[1]


class ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: Proxy

    def log_message(self, *args):
        pass

    def read_body(self):
        """The request's body, its transfer coding undone (chunked is hop-by-hop)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers: dropped with the chunked coding
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def forward_headers(self, body):
        """The request's headers in order, less the hop-by-hop ones (and those the
        Connection header names); Expect is answered here (the body is read already)."""
        named = {token.strip().lower() for token in self.headers.get("Connection", "").split(",")}
        drop = HOP_BY_HOP | named | {"expect", "content-length"}
        headers = [(name, value) for name, value in self.headers.items() if name.lower() not in drop]
        if body or "Content-Length" in self.headers or "chunked" in self.headers.get("Transfer-Encoding", ""):
            headers.append(("Content-Length", str(len(body))))
        return headers

    def handle_any(self):
        started = time.monotonic()
        body = self.read_body()
        service, operation = classify(self.command, self.path, self.headers, body)
        is_poll = service == "sqs" and operation == "ReceiveMessage"
        recorder = self.server.recorder
        recorder.begin(is_poll)
        headers = self.forward_headers(body)
        response = {}

        def forward():
            connection = http.client.HTTPConnection(HOST, self.server.upstream_port, timeout=120)
            connection.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                connection.putheader(name, value)
            connection.endheaders(body if body or self.command in ("POST", "PUT", "PATCH") else None)
            upstream = connection.getresponse()
            response["connection"] = connection
            response["upstream"] = upstream
            if upstream.getheader("Content-Length") is not None or self.command == "HEAD" \
                    or upstream.status in (204, 304):
                return upstream.status, upstream.getheaders(), upstream.read()
            return upstream.status, upstream.getheaders(), None  # streamed: passed on as it comes

        units = {}
        try:
            if service == "dynamodb":
                (status, upstream_headers, data), units = self.server.accountant.handle(operation, body, forward)
            else:
                status, upstream_headers, data = forward()
        except Exception as error:  # whatever went wrong: the caller gets a 502, and it is recorded
            status, upstream_headers, data = 502, [("Content-Type", "text/plain")], f"proxy: {error}".encode()
            units = {"error": str(error)}
        sent = 0
        try:
            upstream = response.get("upstream")
            self.send_response_only(status, upstream.reason if upstream else None)
            for name, value in upstream_headers:
                if name.lower() not in HOP_BY_HOP:
                    self.send_header(name, value)
            if data is None:
                # No length (chunked, or until close): passed on piece by piece as it comes.
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                pieces = []
                while True:
                    chunk = upstream.read1(65536)
                    if not chunk:
                        break
                    pieces.append(chunk)
                    sent += len(chunk)
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
                data = b"".join(pieces)
            else:
                if status == 502:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                sent = len(data)
            self.wfile.flush()
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        finally:
            if response.get("connection"):
                response["connection"].close()
            record = {
                "service": service, "operation": operation, "status": status,
                "request_bytes": len(body), "response_bytes": sent,
                "seconds": round(time.monotonic() - started, 4),
                "at": round(started - recorder.started, 4),
            }
            record.update(units)
            if service == "sqs" and operation == "ReceiveMessage":
                record["messages"] = count_messages(data if isinstance(data, bytes) else b"")
            if service == "sqs":
                payload = record["response_bytes"] if operation == "ReceiveMessage" else record["request_bytes"]
                record["sqs_requests"] = max(1, math.ceil(payload / 65536))
            if service == "s3":
                record["s3_class"] = s3_class(operation)
            if service == "dynamodb" and is_watch_mark(operation, body):
                record["watch_mark"] = True
            recorder.end(record, is_poll)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = handle_any


def count_messages(data):
    """Messages in a ReceiveMessage answer, JSON (the Rust SDK's protocol) or XML."""
    try:
        return len(json.loads(data or b"{}").get("Messages") or [])
    except ValueError:
        return data.count(b"<Message>")


# ---------------------------------------------------------------------------------------
# Processes: moto and the local stack, stopped on exit whatever happens

CHILDREN = []  # (name, Popen, how to stop it)


try:
    LIBC = ctypes.CDLL(None, use_errno=True)
except OSError:
    LIBC = None


def die_with_parent():
    """In the child, before exec: get SIGTERM when this script dies, however it dies
    (Linux's PR_SET_PDEATHSIG), so that no local stack outlives a killed benchmark."""
    if LIBC is not None and sys.platform.startswith("linux"):
        LIBC.prctl(1, int(signal.SIGTERM), 0, 0, 0)


def stop_child(name, process, how):
    if process.poll() is not None:
        return
    try:
        if how == "stdin":  # moto's wrapper stops moto when its stdin closes
            process.stdin.close()
        else:
            process.send_signal(signal.SIGINT)  # the local stack stops gracefully
        process.wait(15)
    except (subprocess.TimeoutExpired, OSError):
        try:
            os.killpg(process.pid, signal.SIGKILL)  # its own group: moto under the wrapper
        except OSError:
            process.kill()
        process.wait()


def stop_all():
    while CHILDREN:
        stop_child(*CHILDREN.pop())


def free_port():
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def log_tail(path, lines=25):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def start_moto(workdir):
    """moto_server on a free port, exactly as local/src/moto.rs starts it: from .venv, with
    local/moto/sitecustomize.py (atomic DynamoDB) first on PYTHONPATH, under a shell that
    stops it when our end of its stdin closes."""
    binary = ROOT / ".venv/bin/moto_server"
    if not binary.exists():
        raise BenchError(f"{binary} not found: install moto first (python3 -m venv .venv && "
                         ".venv/bin/pip install -r requirements.txt)")
    port = free_port()
    site = Path(tempfile.gettempdir()) / f"moto-{port}-site"
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text((ROOT / "local/moto/sitecustomize.py").read_text())
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(site)] + [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p])
    log = workdir / "moto.log"
    wrapper = (f'"$0" -H {HOST} -p {port} >"$1" 2>&1 & pid=$!; '
               "trap 'kill $pid; wait $pid' EXIT; read -r _")
    process = subprocess.Popen(["bash", "-c", wrapper, str(binary), str(log)], stdin=subprocess.PIPE,
                               env=environment, start_new_session=True)
    CHILDREN.append(("moto", process, "stdin"))
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection((HOST, port), timeout=0.2).close()
            return port
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"moto_server did not start on {HOST}:{port}:\n{log_tail(log)}")
            time.sleep(0.1)


class Stack:
    """The local stack, aimed at the proxy. Spawned while this script has one thread (its
    preexec_fn runs between fork and exec); `wait_ready` once the proxy serves."""

    def __init__(self, binary, proxy_port, options, workdir):
        self.log_path = workdir / "local-stack.log"
        self.binary = binary
        environment = dict(os.environ)
        environment.update(options.env)
        command = [str(binary), "--aws-endpoint", f"http://{HOST}:{proxy_port}", "--port", "0",
                   "--sweep-every", "3600", "--words-per-second", str(options.words_per_second),
                   "--web-dir", str(ROOT / "web"), *options.stack_arg]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=environment, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT,
                                            preexec_fn=die_with_parent)
        CHILDREN.append(("local-stack", self.process, "signal"))

    def wait_ready(self):
        deadline = time.monotonic() + STACK_START_LIMIT
        while "Ready in" not in self.log():
            if self.process.poll() is not None:
                raise BenchError(f"the local stack exited with {self.process.returncode} while starting:\n"
                                 f"{log_tail(self.log_path)}")
            if time.monotonic() > deadline:
                raise BenchError(f"the local stack was not ready within {STACK_START_LIMIT} s:\n"
                                 f"{log_tail(self.log_path)}")
            time.sleep(0.1)
        banner = self.log()
        found = re.search(r"Open http://127\.0\.0\.1:(\d+)", banner)
        if not found:
            raise BenchError(f"no address in the local stack's banner:\n{log_tail(self.log_path)}")
        self.port = int(found.group(1))
        self.exports = dict(re.findall(r"\b([A-Z][A-Z0-9_]+)=(\S+)", banner.split("Ready in", 1)[1]))
        self.table = self.exports.get("JOBS_TABLE", "bedrock-jobs-jobs")
        self.region = self.exports.get("AWS_REGION", "us-east-1")
        self.banner = banner

    def log(self):
        return self.log_path.read_text(errors="replace")

    def token(self):
        """The demo user's access token, as `local-stack token --port N` prints it."""
        done = subprocess.run([str(self.binary), "token", "--port", str(self.port)], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        if done.returncode != 0 or not done.stdout.strip():
            raise BenchError(f"`local-stack token` failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def events_endpoint(self):
        """The Event API's real-time (WebSocket) endpoint the stack names, if any: config.json's
        events.realtime, as the web UI learns it, else the EVENTS_REALTIME_URL it exports."""
        _, config, _ = api_call(self.port, "GET", "/config.json")
        events = config.get("events") if isinstance(config, dict) else None
        if isinstance(events, dict) and isinstance(events.get("realtime"), str):
            return events["realtime"]
        return self.exports.get("EVENTS_REALTIME_URL")

    def log_size(self):
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def publishes(self, job_id, since=0):
        """What the stack's Event API says it took for the job's channel, from its log's
        "events published" lines: {"publishes", "events", "deliveries"}; and "failed", the
        worker's publishes that did not go through ("could not publish" lines, which name no
        job: those logged since `since`, a size of the log, while this job ran alone)."""
        found = {"publishes": 0, "events": 0, "deliveries": 0, "failed": 0}
        with open(self.log_path, "rb") as log:
            log.seek(since)
            lines = log.read().decode(errors="replace").splitlines()
        for line in lines:
            published = re.search(r"events published .*?\bevents=(\d+) deliveries=(\d+)", line)
            if published and job_id in line:
                found["publishes"] += 1
                found["events"] += int(published.group(1))
                found["deliveries"] += int(published.group(2))
            elif "could not publish" in line:
                found["failed"] += 1
        return found


# ---------------------------------------------------------------------------------------
# The client: API calls, prompts, the watchers

def api_call(port, method, path, token=None, body=None, timeout=60):
    """(status, JSON body, wall seconds) of one request to the stack (127.0.0.1 only)."""
    headers = {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    started = time.perf_counter()
    try:
        connection.request(method, path, data, headers)
        response = connection.getresponse()
        raw = response.read()
    finally:
        connection.close()
    seconds = time.perf_counter() - started
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = raw.decode(errors="replace")
    return response.status, parsed, seconds


VOCABULARY = {length: words.split() for length, words in {
    2: "an as at be by do go if in is it me my no of on or so to up us we",
    3: "and any are ask bad bed big box but can cat day did dog end far few fit fly for "
       "get got had has her him his how job key let log lot low map may new not now odd "
       "off old one our out own put ran red run saw say see set she sky son sun ten the "
       "top try two use war was way who why win yes yet you",
    4: "able area back best body book both call care case city come cost data does done "
       "door down each even ever face fact fall fast file find fine five form four free "
       "from full game give good hand have head help here high hold home hope hour idea "
       "into item just keep kind know land last late lead left less life like line list "
       "live long look lost made make many mind more most move much must name near need "
       "next note once only open over page part pass past plan play read real rest road "
       "room rule same save seem show side sign size some soon step stop such sure take "
       "talk task team tell text than that them then they this time tree turn type unit "
       "upon used very wait walk want week well went what when will with word work year",
    5: "about above after again agree allow alone along among apply array begin being "
       "below bring build carry cause chain chair check claim class clear close count "
       "cover cross daily delay draft drive early earth entry equal event every exact "
       "field final first floor focus force frame fresh front given grant great green "
       "group guard guess heavy house human image index input issue layer learn least "
       "level light limit local loose lower major match maybe means metal minor model "
       "money month music never night noise north often order other owner paper party "
       "peace phase piece place plain point power press price prime print queue quick "
       "quiet quite range ready reply right river round route scale scene score sense "
       "serve shape share short since skill small sound space speed spend stage stand "
       "start state still stock store story style table taken teach thing think three "
       "times title total touch track trade train trust truth under until upper usage "
       "using value voice watch water while whole world write wrong yield young",
    6: "accept across action active actual advice affect almost always amount answer "
       "appear around arrive assume attack author battle beauty become before behind "
       "better beyond border bottom branch bridge broken budget button buffer camera "
       "carbon center chance change charge choice church client closed coffee column "
       "common couple course credit custom damage debate decade decide degree demand "
       "depend design detail device differ dinner direct divide domain double driver "
       "during easily effect effort either energy engine enough entire escape estate "
       "except expect expert export extend factor family father figure finger finish "
       "flight follow forest format future garden gather gentle global ground growth "
       "handle health height hidden honest impact import income indeed inside intent "
       "island itself kernel latest leader length letter likely linear listen little "
       "manage manner market master matter member memory method middle minute mirror "
       "mobile modern moment mother motion native nature nearly needle notice number "
       "object office option orange origin output packet parent partly people period "
       "person planet player pocket policy prefer pretty prompt proper public purple "
       "random rather reason recent record reduce region remain remote remove repair "
       "report result retain return review rhythm robust runner safety sample school "
       "screen search season second secret select senior server settle signal silver "
       "simple single sister social source spirit spring square stable stream street "
       "strong studio submit summer supply survey switch symbol system talent target "
       "thanks theory thread ticket timber toward travel unless update useful valley "
       "vector vendor versus victim vision volume weight window winter worker writer",
    7: "ability account address advance against airport already ancient another anxiety "
       "anybody applied arrange article attempt average balance battery bearing because "
       "benefit between billing brother cabinet calling capable capital captain careful "
       "ceiling central century certain channel chapter charter chicken circuit classic "
       "climate closing collect combine comfort command comment company compare compile "
       "complex concept concern conduct confirm connect consent consist contact contain "
       "content contest context control convert correct counter country courage creator "
       "culture current cutting dealing decline default deliver density deposit desktop "
       "develop digital discuss display distant dynamic eastern economy edition element "
       "emotion enabled engaged entered equally evening example excited exclude exhibit "
       "explain express extreme factory failure fashion feature federal feeling fiction "
       "finance finding fishing foreign forever formula fortune forward freedom further "
       "gallery general genuine greater grocery habitat harmony healthy hearing heavily",
}.items()}


def make_prompt(words, target_bytes, seed):
    """`words` words from VOCABULARY, `target_bytes` UTF-8 bytes in all (spaces included),
    the same for the same arguments."""
    rng = random.Random(seed)
    letters = target_bytes - (words - 1)
    base, extra = divmod(letters, words)
    lengths = [base + 1] * extra + [base] * (words - extra)
    rng.shuffle(lengths)
    # spread the lengths around the mean while keeping their sum: pairs of +d / -d
    for i in range(0, words - 1, 2):
        shift = rng.randint(0, 2)
        low, high = lengths[i] - shift, lengths[i + 1] + shift
        if min(VOCABULARY) <= low and high <= max(VOCABULARY):
            lengths[i], lengths[i + 1] = low, high
    lengths = [min(max(length, min(VOCABULARY)), max(VOCABULARY)) for length in lengths]
    return " ".join(rng.choice(VOCABULARY[length]) for length in lengths)


def wait_terminal(emulator, table, job_id, deadline):
    """The job's status, read straight from moto (uncounted) until it is terminal."""
    while True:
        item = emulator.get_item(table, {"job_id": {"S": job_id}})
        status = item and item.get("status", {}).get("S")
        if status in TERMINAL:
            return status
        if time.monotonic() > deadline:
            raise BenchError(f"job {job_id} is still {status} after its time limit")
        time.sleep(0.2)


def long_poll_watcher(port, token, job_id, deadline, result):
    """Follows the job as the web UI does (web/app.js, followJob): one GET to learn its seq,
    then GET ?wait=20&after=SEQ until it is terminal. Each request is one invocation of the
    status function."""
    requests = result.setdefault("requests", [])
    seq = None
    try:
        while time.monotonic() < deadline:
            query = "" if seq is None else f"?wait={LONG_POLL_WAIT}&after={seq}"
            status, job, seconds = api_call(port, "GET", f"/jobs/{job_id}{query}", token, timeout=60)
            requests.append({"seconds": round(seconds, 4), "http_status": status,
                             "seq": job.get("seq") if isinstance(job, dict) else None,
                             "status": job.get("status") if isinstance(job, dict) else None})
            if status != 200:
                raise BenchError(f"the long-poll watcher got {status}: {job}")
            seq = job["seq"]
            if job["status"] in TERMINAL:
                return
        raise BenchError(f"the long-poll watcher did not see job {job_id} end in time")
    except Exception as error:  # reported by the scenario
        result["error"] = str(error)


class WebSocket:
    """A minimal RFC 6455 client, enough for the Event API on 127.0.0.1: the opening
    handshake with subprotocols, masked text frames out, text frames in (fragmented or not),
    pings answered, and the closing handshake. Nothing else (no TLS, no extensions)."""

    ACCEPT_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def __init__(self, url, subprotocols, timeout=30):
        parts = urlsplit(url)
        if parts.scheme != "ws" or parts.hostname != HOST:
            raise BenchError(f"the events endpoint {url} is not a ws:// address on {HOST}")
        self.host = parts.netloc
        self.sock = socket.create_connection((HOST, parts.port or 80), timeout=timeout)
        self.opened = time.monotonic()
        self.closed = None
        self.buffer = b""
        key = base64.b64encode(os.urandom(16)).decode()
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.sock.sendall((f"GET {target} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                           f"Sec-WebSocket-Protocol: {', '.join(subprotocols)}\r\n\r\n").encode())
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise BenchError(f"{url} closed the connection during the handshake")
            self.buffer += chunk
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {name.strip().lower(): value.strip()
                   for name, _, value in (line.partition(":") for line in lines[1:])}
        if lines[0].split()[1:2] != ["101"]:
            raise BenchError(f"{url} refused the WebSocket: {lines[0]}")
        accept = base64.b64encode(hashlib.sha1((key + self.ACCEPT_GUID).encode()).digest()).decode()
        if headers.get("sec-websocket-accept") != accept:
            raise BenchError(f"{url} answered a wrong Sec-WebSocket-Accept")
        self.protocol = headers.get("sec-websocket-protocol")

    def _send(self, opcode, payload):
        length = len(payload)
        if length < 126:
            header = bytes([0x80 | opcode, 0x80 | length])
        elif length < 1 << 16:
            header = bytes([0x80 | opcode, 0x80 | 126]) + length.to_bytes(2, "big")
        else:
            header = bytes([0x80 | opcode, 0x80 | 127]) + length.to_bytes(8, "big")
        mask = os.urandom(4)
        self.sock.sendall(header + mask + bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload)))

    def send(self, message):
        """Sends a JSON message as one text frame."""
        self._send(0x1, json.dumps(message).encode())

    def _frame(self):
        """(fin, opcode, payload) of the next whole frame in the buffer, taken out of it; None
        while it is incomplete."""
        data = self.buffer
        if len(data) < 2:
            return None
        length, at = data[1] & 0x7F, 2
        if length >= 126:
            size = 2 if length == 126 else 8
            if len(data) < at + size:
                return None
            length, at = int.from_bytes(data[at:at + size], "big"), at + size
        mask = None
        if data[1] & 0x80:  # a server never masks; taken anyway
            if len(data) < at + 4:
                return None
            mask, at = data[at:at + 4], at + 4
        if len(data) < at + length:
            return None
        payload = data[at:at + length]
        if mask:
            payload = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        self.buffer = data[at + length:]
        return bool(data[0] & 0x80), data[0] & 0x0F, payload

    def receive(self, timeout):
        """The next text message, parsed as JSON; None if none comes within `timeout` s.
        Raises ConnectionError once the server closes the connection."""
        deadline = time.monotonic() + timeout
        pieces = []
        while True:
            frame = self._frame()
            if frame is None:
                left = deadline - time.monotonic()
                if left <= 0 and not pieces:
                    return None
                self.sock.settimeout(max(left, 0.05) if not pieces else 5)
                try:
                    chunk = self.sock.recv(65536)
                except socket.timeout:
                    if pieces:
                        raise ConnectionError("a fragmented message was cut short") from None
                    return None
                if not chunk:
                    self.closed = self.closed or time.monotonic()
                    raise ConnectionError("the server closed the connection")
                self.buffer += chunk
                continue
            fin, opcode, payload = frame
            if opcode == 0x9:  # ping
                self._send(0xA, payload)
            elif opcode == 0x8:  # close: answered, then the connection is over
                self.close()
                raise ConnectionError(f"the server closed the WebSocket: {payload[2:].decode(errors='replace')}")
            elif opcode in (0x1, 0x0):
                pieces.append(payload)
                if fin:
                    return json.loads(b"".join(pieces))
            elif opcode != 0xA:  # pongs ignored; binary is not this protocol's
                raise BenchError(f"unexpected WebSocket frame, opcode {opcode}")

    def close(self):
        """The closing handshake (code 1000), at most a second for the server's answer."""
        if self.closed is not None:
            return
        try:
            self._send(0x8, (1000).to_bytes(2, "big"))
            self.sock.settimeout(1)
            while self.sock.recv(65536):
                pass
        except OSError:
            pass
        finally:
            self.closed = time.monotonic()
            self.sock.close()


def token_claims(token):
    """The claims of a JWT (its payload, not verified: the stack verifies it)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def push_connect(endpoint, token, result):
    """The push watcher's connection, as the protocol doc has it: the subprotocols
    aws-appsync-event-ws and header-<base64url of {"host", "Authorization"}>, then
    connection_init → connection_ack."""
    host = urlsplit(endpoint).netloc
    header = base64.urlsafe_b64encode(json.dumps({"host": host, "Authorization": token}).encode())
    ws = WebSocket(endpoint, ["aws-appsync-event-ws", "header-" + header.decode().rstrip("=")])
    result.update(connections=1, connects=1, subscribes=0, keep_alives=0, deliveries=0, events=[])
    ws.send({"type": "connection_init"})
    ack = ws.receive(10)
    if not ack or ack.get("type") != "connection_ack":
        raise BenchError(f"the Event API answered connection_init with {ack}")
    result["connection_timeout_ms"] = ack.get("connectionTimeoutMs")
    return ws


def push_watcher(ws, context, job_id, finished, result):
    """Follows the job by push on the open connection `ws`: subscribes to the job's channel,
    reads the job once (GET /jobs/{id}, one status invocation), then takes the channel's
    events until `finished` is set (the job is terminal) and every event the stack's log says
    it delivered on the channel has come. Puts in `result`: subscribes, deliveries (data
    events), keep_alives, events (offset, attempt, bytes, text), read (the GET), requests
    (for the Lambda accounting), connection_seconds."""
    stack, token = context["stack"], context["token"]
    channel = f"/jobs/{token_claims(token)['sub']}/{job_id}"
    host = ws.host
    subscription = str(uuid.uuid4())
    result["channel"] = channel

    def take(message):
        kind = message.get("type")
        if kind == "ka":
            result["keep_alives"] += 1
        elif kind == "data" and message.get("id") == subscription:
            event = json.loads(message["event"])
            result["deliveries"] += 1
            result["events"].append({"attempt": event.get("attempt"), "offset": event.get("offset"),
                                     "bytes": len(message["event"].encode()), "text": event.get("text", "")})
        elif kind in ("subscribe_success", "connection_ack"):
            pass
        else:
            raise BenchError(f"the Event API sent {message}")

    ws.send({"type": "subscribe", "id": subscription, "channel": channel,
             "authorization": {"Authorization": token, "host": host}})
    result["subscribes"] += 1
    deadline = time.monotonic() + 10
    while True:
        message = ws.receive(max(0.0, deadline - time.monotonic()))
        if message is None:
            raise BenchError("no answer to the subscribe within 10 s")
        if message.get("type") == "subscribe_success" and message.get("id") == subscription:
            break
        if message.get("type") == "subscribe_error":
            raise BenchError(f"the subscribe was refused: {message}")
        take(message)
    result["subscribed_after"] = round(time.monotonic() - ws.opened, 4)

    # The one read a resuming client makes once subscribed.
    status, job, seconds = api_call(stack.port, "GET", f"/jobs/{job_id}", token)
    if status != 200:
        raise BenchError(f"the push watcher's GET /jobs/{job_id} answered {status}: {job}")
    result["requests"] = [{"seconds": round(seconds, 4), "http_status": status, "seq": job.get("seq"),
                           "status": job.get("status")}]
    result["read"] = {"status": job.get("status"), "attempts": job.get("attempts"),
                      "output": job.get("output") or "", "seq": job.get("seq")}

    while not finished.is_set():
        message = ws.receive(0.2)
        if message is not None:
            take(message)
    # Terminal: the attempt published its last text before it wrote the outcome. Wait for
    # every delivery the stack logged on the channel, then for a quiet moment.
    wait_until = time.monotonic() + 5
    while result["deliveries"] < stack.publishes(job_id)["deliveries"] and time.monotonic() < wait_until:
        message = ws.receive(0.2)
        if message is not None:
            take(message)
    while (message := ws.receive(0.3)) is not None:
        take(message)
    ws.close()
    result["connection_seconds"] = round(ws.closed - ws.opened, 4)


def splice_events(read, events):
    """The job's text as a resuming client builds it (docs/contract.md, "Text events"): the
    text of its one read, then each event by its offset (bytes of UTF-8) into its attempt's
    text: appended when it starts where the text ends, what is held already skipped, a new
    attempt started anew. Returns (text, gap): gap is the first event that starts beyond the
    text held (one was missed), else None."""
    attempt, held = read.get("attempts") or 0, (read.get("output") or "").encode()
    for event in events:
        if event["attempt"] is None or event["offset"] is None:
            return held.decode(errors="replace"), event
        if event["attempt"] < attempt:
            continue  # an earlier attempt's text: superseded
        if event["attempt"] > attempt:
            attempt, held = event["attempt"], b""
        text = event["text"].encode()
        if event["offset"] > len(held):
            return held.decode(errors="replace"), event
        held += text[len(held) - event["offset"]:]
    return held.decode(errors="replace"), None


# ---------------------------------------------------------------------------------------
# One job in one scenario

def run_job(context, shape, scenario):
    words, target_bytes, max_tokens, answer_tokens = SHAPES[shape]
    prompt = make_prompt(words, target_bytes, seed=f"{shape}-{words}")
    stack, token, recorder = context["stack"], context["token"], context["recorder"]
    deadline = time.monotonic() + context["job_timeout"]
    watcher = {}
    push_endpoint = ws = None
    if scenario == "push":
        push_endpoint = stack.events_endpoint()
        if not push_endpoint:
            return {"skipped": "the local stack names no events endpoint (no events.realtime in its "
                               "config.json, no EVENTS_REALTIME_URL in its exports)"}

    recorder.wait_quiet()
    recorder.reset()
    log_mark = stack.log_size()
    finished = threading.Event()
    thread = None
    try:
        if scenario == "push":
            ws = push_connect(push_endpoint, token, watcher)  # no AWS call: the token is checked locally
        status, accepted, post_seconds = api_call(stack.port, "POST", "/generate", token,
                                                  {"prompt": prompt, "max_tokens": max_tokens})
        if status != 202:
            raise BenchError(f"POST /generate answered {status}: {accepted}")
        job_id = accepted["job_id"]
        if scenario == "long-poll":
            thread = threading.Thread(target=long_poll_watcher,
                                      args=(stack.port, token, job_id, deadline, watcher), daemon=True)
            thread.start()
        elif scenario == "push":
            thread = threading.Thread(target=push_watcher_safe,
                                      args=(ws, context, job_id, finished, watcher), daemon=True)
            thread.start()
        final_status = wait_terminal(context["emulator"], stack.table, job_id, deadline)
    finally:
        finished.set()
        if thread is None and ws is not None:
            ws.close()
    if thread:
        thread.join(max(1.0, deadline - time.monotonic()))
        if thread.is_alive() or watcher.get("error"):
            raise BenchError(f"{scenario} watcher of job {job_id}: {watcher.get('error', 'did not finish')}")
    status, job, get_seconds = api_call(stack.port, "GET", f"/jobs/{job_id}", token)
    if status != 200:
        raise BenchError(f"GET /jobs/{job_id} answered {status}: {job}")
    if final_status != "succeeded" or job.get("status") != "succeeded":
        error = job.get("error") if isinstance(job, dict) else job
        raise BenchError(f"job {job_id} ({shape}, {scenario}) ended {job.get('status')}: {error}")
    if not recorder.wait_quiet():
        print(f"  note: the stack was still making calls {QUIET_LIMIT} s after job {job_id}",
              file=sys.stderr)
    calls = recorder.snapshot()
    published = stack.publishes(job_id, log_mark)

    usage = job.get("usage") or {}
    notes = []
    if usage.get("output_tokens") != answer_tokens:
        notes.append(f"answer of {usage.get('output_tokens')} tokens, not {answer_tokens}")
    if published["failed"]:
        notes.append(f"{published['failed']} publish(es) failed (the stack's log)")
    if scenario == "push":
        check_push(watcher, published, job, notes)
    elif published["publishes"]:
        notes.append(f"an unwatched job published {published['events']} event(s) in "
                     f"{published['publishes']} publish(es)")
    return {
        "job_id": job_id, "shape": shape, "scenario": scenario,
        "prompt_words": len(prompt.split()), "prompt_bytes": len(prompt.encode()),
        "max_tokens": max_tokens, "model": job.get("model"), "usage": usage,
        "cost_usd_reported": job.get("cost_usd"), "seq": job.get("seq"),
        "api": {"post_seconds": round(post_seconds, 4), "final_get_seconds": round(get_seconds, 4)},
        "watcher": watcher if scenario == "long-poll" else None,
        "push": watcher if scenario == "push" else None,
        "published": published,
        "calls": calls, "notes": notes,
    }


def push_watcher_safe(ws, context, job_id, finished, result):
    try:
        push_watcher(ws, context, job_id, finished, result)
    except Exception as error:  # reported by the scenario
        result["error"] = f"{type(error).__name__}: {error}"
    finally:
        ws.close()


def check_push(watcher, published, job, notes):
    """The issue's correctness check: the watcher's read and the events it got, spliced by
    offset, are the job's final output exactly; raises BenchError if not. Then the events
    against the stack's log: every event published was delivered to the one subscriber, one
    event per publish (notes if not)."""
    output = job.get("output") or ""
    joined, gap = splice_events(watcher["read"], watcher["events"])
    events = watcher["events"]
    watcher["join"] = {
        "ok": gap is None and joined == output,
        "events": len(events),
        "first_offset": events[0]["offset"] if events else None,
        "read_bytes": len(watcher["read"]["output"].encode()),
        "output_bytes": len(output.encode()),
        # the events alone, with no read: all of the text iff they start at 0 of its attempt
        "events_alone": splice_events({"attempts": job.get("attempts"), "output": ""}, events)[0] == output,
    }
    if gap is not None:
        raise BenchError(f"push watcher: an event starts at byte {gap['offset']} of attempt {gap['attempt']}, "
                         f"beyond the {len(joined.encode())} bytes held: an event was missed")
    if joined != output:
        raise BenchError(f"push watcher: the read ({watcher['join']['read_bytes']} bytes) and {len(events)} "
                         f"event(s) give {len(joined.encode())} bytes that are not the job's output "
                         f"({len(output.encode())} bytes): {joined[-80:]!r} vs {output[-80:]!r}")
    if published["deliveries"] != watcher["deliveries"]:
        notes.append(f"the stack delivered {published['deliveries']} event(s) on the channel, "
                     f"the watcher got {watcher['deliveries']}")
    if published["events"] != published["publishes"]:
        notes.append(f"{published['publishes']} publishes carried {published['events']} events")
    if not watcher["join"]["events_alone"]:
        notes.append(f"the events alone (from offset {watcher['join']['first_offset']}) are not the whole "
                     "text: the read filled in the start")


# ---------------------------------------------------------------------------------------
# Totals and prices of one run

def summarize(run):
    """The run's totals by service and operation, and their prices."""
    operations = {}
    totals = {"dynamodb_read_units": 0.0, "dynamodb_write_units": 0, "dynamodb_index_write_units": 0,
              "dynamodb_calls": 0, "sqs_requests": 0, "sqs_calls": 0, "sqs_empty_polls": 0,
              "s3_put_class": 0, "s3_get_class": 0, "s3_delete": 0, "cognito_calls": 0,
              "other_calls": 0, "appsync_publishes": 0, "watch_mark_calls": 0,
              "watch_mark_write_units": 0, "watch_mark_index_write_units": 0}
    index_units = {}
    for call in run["calls"]:
        service, operation = call["service"], call["operation"]
        empty_poll = service == "sqs" and operation == "ReceiveMessage" and not call.get("messages")
        if empty_poll:
            operation = "ReceiveMessage, empty poll"
        if call.get("watch_mark"):
            operation += " (watch mark: the push watcher's subscribe)"
            totals["watch_mark_calls"] += 1
            totals["watch_mark_write_units"] += call.get("write_units", 0)
            totals["watch_mark_index_write_units"] += call.get("index_write_units", 0)
        row = operations.setdefault(f"{service} {operation}", {
            "service": service, "operation": operation, "calls": 0, "request_bytes": 0,
            "response_bytes": 0, "read_units": 0.0, "write_units": 0, "index_write_units": 0,
            "billable_requests": 0, "charged": not (empty_poll or service in ("cognito-idp", "moto"))})
        row["calls"] += 1
        row["request_bytes"] += call["request_bytes"]
        row["response_bytes"] += call["response_bytes"]
        if service == "dynamodb":
            row["read_units"] += call.get("read_units", 0)
            row["write_units"] += call.get("write_units", 0)
            row["index_write_units"] += call.get("index_write_units", 0)
            for name, count in (call.get("by_index") or {}).items():
                index_units[name] = index_units.get(name, 0) + count
            totals["dynamodb_calls"] += 1
            totals["dynamodb_read_units"] += call.get("read_units", 0)
            totals["dynamodb_write_units"] += call.get("write_units", 0)
            totals["dynamodb_index_write_units"] += call.get("index_write_units", 0)
        elif service == "sqs":
            if empty_poll:
                totals["sqs_empty_polls"] += 1
            else:
                row["billable_requests"] += call["sqs_requests"]
                totals["sqs_requests"] += call["sqs_requests"]
                totals["sqs_calls"] += 1
        elif service == "s3":
            row["billable_requests"] += 1
            totals[{"put": "s3_put_class", "get": "s3_get_class", "delete": "s3_delete"}[call["s3_class"]]] += 1
        elif service == "cognito-idp":
            totals["cognito_calls"] += 1
        elif service in ("appsync", "events", "appsync-events"):
            row["billable_requests"] += 1
            totals["appsync_publishes"] += 1
        else:
            totals["other_calls"] += 1
    push = run.get("push") or {}
    # the long-poll watcher's requests, or the push watcher's one read: status invocations
    watcher_requests = (run.get("watcher") or push).get("requests") or []
    watcher_seconds = sum(r["seconds"] for r in watcher_requests)
    lambda_seconds = run["api"]["post_seconds"] + run["api"]["final_get_seconds"] + watcher_seconds
    totals.update({
        "api_invocations": 1,
        "status_invocations": 1 + len(watcher_requests),
        "lambda_invocations": 2 + len(watcher_requests),
        "lambda_seconds": lambda_seconds,
        "lambda_gb_seconds": lambda_seconds * LAMBDA_GB,
        "api_requests": 2 + len(watcher_requests),
        "watcher_requests": len(watcher_requests),
        "watcher_seconds": watcher_seconds,
    })
    totals.update(appsync_totals(run.get("published") or {}, push))
    p = PRICES
    cost = {
        "dynamodb_reads": totals["dynamodb_read_units"] * p["dynamodb_read_request_unit"],
        "dynamodb_writes": totals["dynamodb_write_units"] * p["dynamodb_write_request_unit"],
        "dynamodb_index_writes": totals["dynamodb_index_write_units"] * p["dynamodb_write_request_unit"],
        "sqs": totals["sqs_requests"] * p["sqs_request"],
        "s3": totals["s3_put_class"] * p["s3_put_copy_post_list_request"]
              + totals["s3_get_class"] * p["s3_get_and_other_request"]
              + totals["s3_delete"] * p["s3_delete_request"],
        "lambda_requests": totals["lambda_invocations"] * p["lambda_request"],
        "lambda_duration": totals["lambda_gb_seconds"] * p["lambda_gb_second"],
        "api_gateway": totals["api_requests"] * p["api_gateway_http_request"],
        "appsync_events": totals["appsync_operations"] * p["appsync_events_operation"]
                          + totals["appsync_connection_minutes_billed"] * p["appsync_events_connection_minute"],
    }
    cost["total_without_index_writes"] = sum(v for k, v in cost.items() if k != "dynamodb_index_writes")
    cost["total_with_index_writes"] = cost["total_without_index_writes"] + cost["dynamodb_index_writes"]
    usage = run.get("usage") or {}
    tokens = (usage.get("input_tokens", 0) * p["bedrock_input_token"]
              + usage.get("output_tokens", 0) * p["bedrock_output_token"])
    cost["tokens"] = tokens
    cost["percent_of_tokens_without_index_writes"] = 100 * cost["total_without_index_writes"] / tokens if tokens else None
    cost["percent_of_tokens_with_index_writes"] = 100 * cost["total_with_index_writes"] / tokens if tokens else None
    run["operations"] = sorted(operations.values(), key=lambda r: (not r["charged"], r["service"], r["operation"]))
    run["index_write_units_by_index"] = index_units
    run["totals"] = totals
    run["cost"] = cost
    return run


def appsync_totals(published, push):
    """The AppSync Events side of a run: the publishes of the job's channel as the stack
    logged them (any scenario: an unwatched job should have none), the push watcher's
    connection and messages, and the Event API operations they make (APPSYNC_OPERATIONS, each
    per started APPSYNC_METERED_BYTES of its event; an event published and delivered counts
    its size both ways)."""
    events = push.get("events") or []
    seconds = push.get("connection_seconds", 0)
    counts = {"publishes": published.get("publishes", 0), "deliveries": push.get("deliveries", 0),
              "connects": push.get("connects", 0), "subscribes": push.get("subscribes", 0),
              "keep_alives": push.get("keep_alives", 0)}
    beyond_one = sum(max(1, math.ceil(event["bytes"] / APPSYNC_METERED_BYTES)) - 1 for event in events)
    operations = sum(counts[kind] for kind in APPSYNC_OPERATIONS) + 2 * beyond_one
    return {
        "appsync_publishes": counts["publishes"],
        "appsync_published_events": published.get("events", 0),
        "appsync_logged_deliveries": published.get("deliveries", 0),
        "appsync_deliveries": counts["deliveries"],
        "appsync_connections": push.get("connections", 0),
        "appsync_connects": counts["connects"],
        "appsync_subscribes": counts["subscribes"],
        "appsync_keep_alives": counts["keep_alives"],
        "appsync_event_bytes": sum(event["bytes"] for event in events),
        "appsync_largest_event_bytes": max((event["bytes"] for event in events), default=0),
        "appsync_operations": operations,
        "appsync_connection_seconds": seconds,
        "appsync_connection_minutes": seconds / 60,
        "appsync_connection_minutes_billed": math.ceil(seconds / 60),
    }


def median_of(values):
    """The median of several runs' values, field by field: numbers by their median (a
    field or row missing from a run, None here, counts 0), anything else as the first run
    has it."""
    present = [value for value in values if value is not None]
    if not present:
        return None
    first = present[0]
    if isinstance(first, bool) or not isinstance(first, (int, float, dict)):
        return first
    if isinstance(first, dict):
        keys = dict.fromkeys(key for value in present for key in value)
        return {key: median_of([(value or {}).get(key) for value in values]) for key in keys}
    return statistics.median([value if isinstance(value, (int, float)) else 0 for value in values])


def median_run(runs):
    """One run of the medians: totals, costs, and rows by service and operation."""
    if len(runs) == 1:
        return runs[0]
    merged = {key: runs[0][key] for key in ("shape", "scenario", "prompt_words", "prompt_bytes",
                                             "max_tokens", "model", "notes")}
    merged["job_id"] = [run["job_id"] for run in runs]
    for key in ("totals", "cost", "usage", "index_write_units_by_index"):
        merged[key] = median_of([run[key] for run in runs])
    rows = {}
    for run in runs:
        for row in run["operations"]:
            rows.setdefault(f"{row['service']} {row['operation']}", []).append(row)
    merged["operations"] = [median_of(found + [None] * (len(runs) - len(found))) for found in rows.values()]
    merged["operations"].sort(key=lambda r: (not r["charged"], r["service"], r["operation"]))
    merged["repeats"] = len(runs)
    return merged


# ---------------------------------------------------------------------------------------
# Output

def micro(usd):
    return f"{usd * 1e6:.2f}"


def number(value):
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.1f}"
    return f"{int(value)}"


def shape_title(run):
    return (f"{run['shape']}: {run['prompt_words']}-word prompt ({run['prompt_bytes'] / 1000:.1f} KB), "
            f"max_tokens {run['max_tokens']}")


def run_tables(run):
    """The Markdown tables of one shape in one scenario."""
    t, c = run["totals"], run["cost"]
    usage = run.get("usage") or {}
    lines = [f"#### {shape_title(run)} — {run['scenario']}", ""]
    if run.get("repeats", 1) > 1:
        lines += [f"Medians of {run['repeats']} runs.", ""]
    lines += ["| service | operation | calls | bytes sent / received | read units | write units (table) "
              "| write units (indexes) | billed requests |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in run["operations"]:
        dynamo = row["service"] == "dynamodb"
        label = row["operation"] + ("" if row["charged"] else " (not charged to the job)")
        lines.append(
            f"| {row['service']} | {label} | {number(row['calls'])} "
            f"| {number(row['request_bytes'])} / {number(row['response_bytes'])} "
            f"| {number(row['read_units']) if dynamo else ''} | {number(row['write_units']) if dynamo else ''} "
            f"| {number(row['index_write_units']) if dynamo else ''} "
            f"| {number(row['billable_requests']) if not dynamo and row['charged'] else ''} |")
    by_index = ", ".join(f"{name} {number(units)}" for name, units in run["index_write_units_by_index"].items())
    lines += [
        "",
        "| what | quantity | USD per job | USD per million jobs |",
        "|---|---|---:|---:|",
        f"| DynamoDB reads | {number(t['dynamodb_read_units'])} read units "
        f"| {c['dynamodb_reads']:.3g} | {micro(c['dynamodb_reads'])} |",
        f"| DynamoDB writes, table | {number(t['dynamodb_write_units'])} write units "
        f"| {c['dynamodb_writes']:.3g} | {micro(c['dynamodb_writes'])} |",
        f"| DynamoDB writes, indexes | {number(t['dynamodb_index_write_units'])} write units"
        f"{f' ({by_index})' if by_index else ''} | {c['dynamodb_index_writes']:.3g} "
        f"| {micro(c['dynamodb_index_writes'])} |",
        f"| SQS | {number(t['sqs_requests'])} requests (empty polls not charged: "
        f"{number(t['sqs_empty_polls'])}) | {c['sqs']:.3g} | {micro(c['sqs'])} |",
        f"| S3 | {number(t['s3_put_class'])} PUT/COPY/POST/LIST, {number(t['s3_get_class'])} GET/HEAD, "
        f"{number(t['s3_delete'])} DELETE | {c['s3']:.3g} | {micro(c['s3'])} |",
        f"| Lambda invocations | {number(t['lambda_invocations'])} (api {number(t['api_invocations'])}, "
        f"status {number(t['status_invocations'])}) | {c['lambda_requests']:.3g} | {micro(c['lambda_requests'])} |",
        f"| Lambda duration | {t['lambda_seconds']:.2f} s × {LAMBDA_GB} GB = {t['lambda_gb_seconds']:.3f} GB-s "
        f"| {c['lambda_duration']:.3g} | {micro(c['lambda_duration'])} |",
        f"| API Gateway | {number(t['api_requests'])} requests | {c['api_gateway']:.3g} | {micro(c['api_gateway'])} |",
        f"| AppSync Events | {number(t['appsync_operations'])} operations ({number(t['appsync_publishes'])} publishes, "
        f"{number(t['appsync_deliveries'])} deliveries, {number(t['appsync_connects'])} connects, "
        f"{number(t['appsync_subscribes'])} subscribes, {number(t['appsync_keep_alives'])} keep-alives); "
        f"{t['appsync_connection_seconds']:.1f} s connected, {number(t['appsync_connection_minutes_billed'])} "
        f"connection-minute(s) | {c['appsync_events']:.3g} | {micro(c['appsync_events'])} |",
        f"| Cognito | {number(t['cognito_calls'])} calls (not charged to the job) | | |",
        f"| **AWS, without index writes** | | **{c['total_without_index_writes']:.3g}** "
        f"| **{micro(c['total_without_index_writes'])}** |",
        f"| **AWS, with index writes** | | **{c['total_with_index_writes']:.3g}** "
        f"| **{micro(c['total_with_index_writes'])}** |",
        f"| model tokens | {number(usage.get('input_tokens', 0))} in, {number(usage.get('output_tokens', 0))} out "
        f"| {c['tokens']:.3g} | {micro(c['tokens'])} |",
        f"| **AWS vs tokens** | without / with index writes | **{percent(c['percent_of_tokens_without_index_writes'])}"
        f" / {percent(c['percent_of_tokens_with_index_writes'])}** | |",
    ]
    push = run.get("push")
    if push and push.get("join"):
        join = push["join"]
        lines += ["", f"Push watcher: one connection, {push['connection_seconds']:.2f} s; subscribed "
                      f"{push['subscribed_after'] * 1000:.0f} ms after connecting; its one read "
                      f"(GET /jobs/{{id}}, {push['read']['status']}) held {join['read_bytes']} bytes; "
                      f"{join['events']} events from offset {join['first_offset']} "
                      f"({number(t['appsync_event_bytes'])} bytes, the largest {number(t['appsync_largest_event_bytes'])}); "
                      f"the stack logged {number(t['appsync_publishes'])} publishes of "
                      f"{number(t['appsync_published_events'])} events and {number(t['appsync_logged_deliveries'])} "
                      f"deliveries; read + events = the final output ({join['output_bytes']} bytes): "
                      f"{'yes' if join['ok'] else 'NO'}; the events alone: {'yes' if join['events_alone'] else 'no'}."]
    if run.get("notes"):
        lines += ["", "Notes: " + "; ".join(run["notes"])]
    return "\n".join(lines)


def percent(value):
    return "–" if value is None else f"{value:.0f}%"


def watcher_extra(long_poll, unwatched):
    """What the long-poll watcher alone adds: its own invocations and API requests (one each
    per request), its Lambda time, and the read units of the long-poll run beyond the
    unwatched run's (its re-reads of the job)."""
    t = long_poll["totals"]
    read_units = max(0.0, t["dynamodb_read_units"] - unwatched["totals"]["dynamodb_read_units"])
    p = PRICES
    extra = (t["watcher_requests"] * (p["lambda_request"] + p["api_gateway_http_request"])
             + t["watcher_seconds"] * LAMBDA_GB * p["lambda_gb_second"]
             + read_units * p["dynamodb_read_request_unit"])
    tokens = long_poll["cost"]["tokens"]
    return {"invocations": t["watcher_requests"],
            "invocations_after_first_read": max(0, t["watcher_requests"] - 1),
            "lambda_seconds": t["watcher_seconds"],
            "read_units": read_units, "cost": extra,
            "percent_of_tokens": 100 * extra / tokens if tokens else None}


def push_extra(push, unwatched):
    """What the push watcher alone adds: its one read (an invocation and an API request, its
    Lambda time), the read units of the push run beyond the unwatched run's, the watch mark
    (its table and index write units), and AppSync Events (its operations and
    connection-minutes). The push run's other write units beyond the unwatched run's are
    shown apart (they would be the worker's: a watched job should write as an unwatched one)."""
    t, u = push["totals"], unwatched["totals"]
    read_units = max(0.0, t["dynamodb_read_units"] - u["dynamodb_read_units"])
    p = PRICES
    extra = (t["watcher_requests"] * (p["lambda_request"] + p["api_gateway_http_request"])
             + t["watcher_seconds"] * LAMBDA_GB * p["lambda_gb_second"]
             + read_units * p["dynamodb_read_request_unit"]
             + (t["watch_mark_write_units"] + t["watch_mark_index_write_units"]) * p["dynamodb_write_request_unit"]
             + push["cost"]["appsync_events"])
    tokens = push["cost"]["tokens"]
    return {"invocations": t["watcher_requests"],
            "invocations_after_first_read": max(0, t["watcher_requests"] - 1),
            "lambda_seconds": t["watcher_seconds"], "read_units": read_units,
            "watch_mark_write_units": t["watch_mark_write_units"],
            "watch_mark_index_write_units": t["watch_mark_index_write_units"],
            "other_write_units_delta": t["dynamodb_write_units"] - t["watch_mark_write_units"] - u["dynamodb_write_units"],
            "publishes": t["appsync_publishes"], "deliveries": t["appsync_deliveries"],
            "keep_alives": t["appsync_keep_alives"], "appsync_operations": t["appsync_operations"],
            "connection_seconds": t["appsync_connection_seconds"],
            "connection_minutes_billed": t["appsync_connection_minutes_billed"],
            "appsync_cost": push["cost"]["appsync_events"], "cost": extra,
            "percent_of_tokens": 100 * extra / tokens if tokens else None}


def summary_table(results):
    lines = ["| job | unwatched: table WCU | index WCU | AWS cost vs token cost (without / with index writes) "
             "| long-poll watcher: invocations, Lambda s, RCU, extra cost % "
             "| push watcher: invocations after the first read, RCU, publishes / deliveries, extra cost % |",
             "|---|---:|---:|---|---|---|"]
    for shape in SHAPES:
        unwatched = results.get((shape, "unwatched"))
        long_poll = results.get((shape, "long-poll"))
        push = results.get((shape, "push"))
        if not unwatched and not long_poll and not push:
            continue
        base = unwatched or long_poll or push
        words, _, max_tokens, answer = SHAPES[shape]
        usage = base.get("usage") or {}
        job = (f"{shape}: {words} words ({base['prompt_bytes'] / 1000:.1f} KB), "
               f"{number(usage.get('output_tokens', answer))}-token answer")
        if unwatched:
            t, c = unwatched["totals"], unwatched["cost"]
            cells = [number(t["dynamodb_write_units"]), number(t["dynamodb_index_write_units"]),
                     f"${c['total_without_index_writes'] * 1e6:.2f} / ${c['total_with_index_writes'] * 1e6:.2f} "
                     f"vs ${c['tokens'] * 1e6:.2f} per million jobs: "
                     f"{percent(c['percent_of_tokens_without_index_writes'])} / "
                     f"{percent(c['percent_of_tokens_with_index_writes'])}"]
        else:
            cells = ["", "", ""]
        if long_poll and unwatched:
            w = watcher_extra(long_poll, unwatched)
            cells.append(f"{number(w['invocations'])}, {w['lambda_seconds']:.1f} s, {number(w['read_units'])} RCU, "
                         f"+{percent(w['percent_of_tokens'])}")
        elif long_poll:
            t = long_poll["totals"]
            cells.append(f"{number(t['watcher_requests'])}, {t['watcher_seconds']:.1f} s (no unwatched run to compare)")
        else:
            cells.append("")
        if push and unwatched:
            w = push_extra(push, unwatched)
            cells.append(f"{number(w['invocations_after_first_read'])}, {number(w['read_units'])} RCU, "
                         f"{number(w['publishes'])} / {number(w['deliveries'])}, +{percent(w['percent_of_tokens'])}")
        elif push:
            t = push["totals"]
            cells.append(f"{number(max(0, t['watcher_requests'] - 1))}, "
                         f"{number(t['appsync_publishes'])} / {number(t['appsync_deliveries'])} "
                         "(no unwatched run to compare)")
        else:
            cells.append("")
        lines.append(f"| {job} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def prices_text():
    width = max(map(len, PRICES))
    lines = ["Prices (USD, us-east-1; see the comment above PRICES in scripts/bench_cost.py):"]
    for name, value in PRICES.items():
        lines.append(f"  {name:<{width}}  {value:.10g}")
    lines.append(f"  (Lambda GB per invocation: {LAMBDA_GB}; token prices are those of {PRICED_MODEL})")
    return "\n".join(lines)


def check_token_prices():
    """A note if shared/prices.json prices the model otherwise than PRICES does."""
    try:
        listed = json.loads((ROOT / "shared/prices.json").read_text())[PRICED_MODEL]
    except (OSError, KeyError, ValueError):
        return None
    if (abs(float(listed["input"]) / 1e3 - PRICES["bedrock_input_token"]) > 1e-15
            or abs(float(listed["output"]) / 1e3 - PRICES["bedrock_output_token"]) > 1e-15):
        return (f"note: shared/prices.json prices {PRICED_MODEL} at {listed['input']} / {listed['output']} "
                "per 1,000 tokens, not as PRICES does")
    return None


# ---------------------------------------------------------------------------------------

def run_all(options, binary, shapes, scenarios, workdir):
    """moto, the proxy and the stack; an uncounted warm-up job; then every scenario and
    shape, `options.repeat` times. Returns (medians by (shape, scenario), runs, skips)."""
    results, runs, skipped = {}, [], []
    print(f"starting moto, the counting proxy and {binary.name} …", file=sys.stderr, flush=True)
    moto_port = start_moto(workdir)
    emulator = Emulator(moto_port)
    recorder = Recorder()
    proxy = Proxy(moto_port, Accountant(emulator), recorder)  # listening already
    serving = False
    try:
        stack = Stack(binary, proxy.port, options, workdir)  # spawned while we have one thread
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        serving = True
        stack.wait_ready()
        emulator.region = stack.region
        context = {"stack": stack, "token": stack.token(), "recorder": recorder, "emulator": emulator,
                   "job_timeout": options.job_timeout}
        try:
            print("warm-up job (not counted) …", file=sys.stderr, flush=True)
            # followed by push if push is to be measured: the Event API's authorizer fetches
            # its JWKS at its first connection, which is no job's
            if "push" not in scenarios or "skipped" in run_job(context, "small", "push"):
                run_job(context, "small", "unwatched")
            for scenario in scenarios:
                for shape in shapes:
                    found = []
                    for attempt in range(options.repeat):
                        print(f"{scenario}, {shape}, run {attempt + 1} of {options.repeat} …",
                              file=sys.stderr, flush=True)
                        run = run_job(context, shape, scenario)
                        if "skipped" in run:
                            break
                        found.append(summarize(run))
                    if not found:  # the scenario cannot run on this stack: no other shape can
                        print(f"  skipped: {run['skipped']}", file=sys.stderr)
                        skipped.append(f"{scenario}: {run['skipped']}")
                        break
                    runs.extend(found)
                    results[(shape, scenario)] = median_run(found)
        except BenchError as error:
            raise BenchError(f"{error}\n--- the local stack's log:\n{log_tail(stack.log_path)}") from None
    finally:
        stop_all()
        if serving:
            proxy.shutdown()
        proxy.server_close()
    return results, runs, skipped


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="See the module's docstring (the top of this file) for what is counted.")
    target = Path(os.environ["CARGO_TARGET_DIR"]) if os.environ.get("CARGO_TARGET_DIR") else ROOT / "target"
    parser.add_argument("--stack-bin", type=Path, default=target / "debug" / "local-stack",
                        help="the local-stack binary (default: %(default)s)")
    parser.add_argument("--label", default="", help="a label for the output (before, after, ...)")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated: small,medium,large")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help="comma-separated: unwatched,long-poll,push (default: all)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each scenario and shape (medians)")
    parser.add_argument("--words-per-second", type=float, default=40.0,
                        help="the offline model's pace (default 40, the local stack's)")
    parser.add_argument("--job-timeout", type=float, default=120.0, help="seconds a job may take (default 120)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="add a variable to the local stack's environment (e.g. MAX_JOBS_PER_MINUTE=30)")
    parser.add_argument("--stack-arg", action="append", default=[], metavar="ARG",
                        help="pass ARG to the local stack (e.g. --stack-arg=--latency-ms=200)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write everything to FILE")
    parser.add_argument("--logs", type=Path, metavar="DIR",
                        help="keep the local stack's and moto's logs in DIR (default: thrown away)")
    parser.add_argument("--prices", action="store_true", help="print the price table and exit")
    parser.add_argument("--self-test", action="store_true", help="check the item-size rules and the push splice, and exit")
    options = parser.parse_args()

    self_checks()
    if options.self_test:
        print("self-checks passed (item sizes, the push watcher's splice)")
        return 0
    if options.prices:
        print(prices_text())
        return 0
    shapes = [s.strip() for s in options.shapes.split(",") if s.strip()]
    scenarios = [s.strip() for s in options.scenarios.split(",") if s.strip()]
    if not shapes or set(shapes) - set(SHAPES):
        parser.error(f"--shapes: choose among {', '.join(SHAPES)}")
    if not scenarios or set(scenarios) - set(SCENARIOS):
        parser.error(f"--scenarios: choose among {', '.join(SCENARIOS)}")
    if options.repeat < 1:
        parser.error("--repeat must be at least 1")
    try:
        options.env = dict(item.split("=", 1) for item in options.env)
    except ValueError:
        parser.error("--env takes NAME=VALUE")
    binary = options.stack_bin.resolve()
    if not binary.is_file():
        parser.error(f"{binary} not found: build it with `cargo build -p local --bin local-stack` "
                     "or give --stack-bin")

    def on_signal(number, _frame):
        raise SystemExit(128 + number)

    for number in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(number, on_signal)

    atexit.register(stop_all)
    started_at = time.strftime("%Y-%m-%d %H:%M:%S")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-cost-") as workdir:
            workdir = Path(workdir)
            try:
                results, runs, skipped = run_all(options, binary, shapes, scenarios, workdir)
            finally:
                stop_all()
                if options.logs:
                    options.logs.mkdir(parents=True, exist_ok=True)
                    for log in workdir.glob("*.log"):
                        shutil.copy(log, options.logs / log.name)
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    label = f" ({options.label})" if options.label else ""
    out = [f"## AWS cost of one job{label}", "",
           f"{started_at}; {binary}; offline model at {options.words_per_second:g} words a second; "
           f"{options.repeat} run(s) of each; prices of scripts/bench_cost.py (us-east-1 list prices). "
           "USD per million jobs = µ$ per job.", ""]
    note = check_token_prices()
    if note:
        out += [note, ""]
    out += ["### Summary", "", summary_table(results), ""]
    for scenario in scenarios:
        for shape in shapes:
            if (shape, scenario) in results:
                out += [run_tables(results[(shape, scenario)]), ""]
    for line in skipped:
        out += [f"Skipped {line}", ""]
    print("\n".join(out))
    if options.json:
        options.json.write_text(json.dumps({
            "label": options.label, "started_at": started_at, "stack_bin": str(binary),
            "words_per_second": options.words_per_second, "repeat": options.repeat,
            "prices": PRICES, "lambda_gb": LAMBDA_GB, "skipped": skipped,
            "summary": [{"shape": shape,
                         "unwatched": results.get((shape, "unwatched"), {}).get("totals"),
                         "watcher": watcher_extra(results[(shape, "long-poll")], results[(shape, "unwatched")])
                         if (shape, "long-poll") in results and (shape, "unwatched") in results else None,
                         "push_watcher": push_extra(results[(shape, "push")], results[(shape, "unwatched")])
                         if (shape, "push") in results and (shape, "unwatched") in results else None}
                        for shape in shapes],
            "results": [dict(result, key=list(key)) for key, result in results.items()],
            "runs": runs,
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
