"""Load benchmark of a running local stack (./scripts/dev.sh): submit jobs from several
threads as the demo user, poll until every job has ended, and report latencies.

    python3 scripts/bench_local.py [--url http://127.0.0.1:3000] [--jobs 200] [--threads 8]

Numbers depend on the machine and the model (the offline model answers at once, so this
measures the pipeline itself: gateway, authorizer, api, DynamoDB, SQS, worker, S3, on moto).
"""

import argparse
import json
import statistics
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime


def call(url, method="GET", body=None, headers=None):
    request = urllib.request.Request(url, method=method, headers=headers or {},
                                     data=json.dumps(body).encode() if body is not None else None)
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.loads(response.read() or b"null")


def sign_in(base, email, password):
    _, config = call(f"{base}/config.json")
    _, result = call(config["cognitoEndpoint"], "POST", {
        "AuthFlow": "USER_PASSWORD_AUTH",
        "ClientId": config["userPoolClientId"],
        "AuthParameters": {"USERNAME": email, "PASSWORD": password},
    }, {"Content-Type": "application/x-amz-json-1.1",
        "X-Amz-Target": "AWSCognitoIdentityProviderService.InitiateAuth"})
    return result["AuthenticationResult"]["AccessToken"]


def percentile(values, share):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--email", default="demo@example.com")
    parser.add_argument("--password", default="Demo-Password-2026!")
    options = parser.parse_args()

    token = sign_in(options.url, options.email, options.password)
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def submit(i):
        started = time.perf_counter()
        status, body = call(f"{options.url}/generate", "POST", {"prompt": f"benchmark job {i}"}, auth)
        assert status == 202, body
        return body["job_id"], time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(options.threads) as pool:
        submitted = list(pool.map(submit, range(options.jobs)))
    submit_seconds = time.perf_counter() - started

    pending = {job_id for job_id, _ in submitted}
    statuses = {}
    while pending:
        with ThreadPoolExecutor(options.threads) as pool:
            for job_id, (_, job) in zip(list(pending), pool.map(
                    lambda job_id: call(f"{options.url}/jobs/{job_id}", headers=auth), list(pending))):
                if job["status"] in ("succeeded", "failed"):
                    statuses[job_id] = job
                    pending.discard(job_id)
        if pending:
            time.sleep(0.2)
    total_seconds = time.perf_counter() - started

    latencies = [seconds * 1000 for _, seconds in submitted]
    queued_to_done = [
        (datetime.fromisoformat(job["completed_at"]) - datetime.fromisoformat(job["created_at"])).total_seconds() * 1000
        for job in statuses.values()
    ]
    succeeded = sum(job["status"] == "succeeded" for job in statuses.values())
    print(f"jobs: {options.jobs} from {options.threads} threads; {succeeded} succeeded, {options.jobs - succeeded} failed")
    print(f"POST /generate: {options.jobs / submit_seconds:.0f} requests/s; latency p50 {statistics.median(latencies):.0f} ms, "
          f"p95 {percentile(latencies, 0.95):.0f} ms, max {max(latencies):.0f} ms")
    print(f"created → completed: p50 {statistics.median(queued_to_done):.0f} ms, p95 {percentile(queued_to_done, 0.95):.0f} ms")
    print(f"all {options.jobs} jobs done {total_seconds:.1f} s after the first submission "
          f"({options.jobs / total_seconds:.0f} jobs/s end to end)")
    return 0 if succeeded == options.jobs else 1


if __name__ == "__main__":
    sys.exit(main())
