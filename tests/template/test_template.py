"""Properties of template.yaml that deployment safety depends on.

The template is run through the SAM transform, as CloudFormation would, and the generated
resources are checked: least-privilege roles (the sweep's generated schedule role included),
private TLS-only buckets, the queue and its event source, recovery (the dead-letter queue's
consumer, the sweep's schedule and its parameters, the alarms), the authorizer on every route,
the table's TTL and indexes, each function's environment, and the sample events.
A regression in any of them fails a test here.
"""

import fnmatch
import json
import os
import pathlib
import re

import pytest
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

ROOT = pathlib.Path(__file__).resolve().parents[2]


class _NoManagedPolicies:
    def load(self):
        return {}


@pytest.fixture(scope="module")
def source():
    return yaml_parse((ROOT / "template.yaml").read_text())


@pytest.fixture(scope="module")
def resources(source):
    template = json.loads(json.dumps(source))
    # As `sam validate` does: the code location is only known after `sam build`.
    template["Globals"]["Function"]["CodeUri"] = "s3://bucket/key"
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    return transform(template, {}, _NoManagedPolicies())["Resources"]


def of_type(resources, kind):
    return {name: r for name, r in resources.items() if r["Type"] == kind}


def resolve(node, conditions):
    """Evaluates Fn::If for the given condition values; leaves other intrinsics alone."""
    if isinstance(node, dict):
        if set(node) == {"Fn::If"}:
            name, when_true, when_false = node["Fn::If"]
            return resolve(when_true if conditions[name] else when_false, conditions)
        return {k: resolve(v, conditions) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(item, conditions) for item in node]
    return node


def refs(node):
    """Every resource or parameter name a node refers to (Ref, GetAtt, Sub)."""
    found = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref":
                found.add(value)
            elif key == "Fn::GetAtt":
                found.add(value[0] if isinstance(value, list) else value.split(".")[0])
            elif key == "Fn::Sub":
                text, local = (value[0], value[1]) if isinstance(value, list) else (value, {})
                named = {v.split(".")[0] for v in re.findall(r"\$\{([^}!]+)\}", text)}
                found |= (named - set(local)) | refs(local)
            else:
                found |= refs(value)
    elif isinstance(node, list):
        for item in node:
            found |= refs(item)
    return found


def as_list(value):
    return value if isinstance(value, list) else [value]


PSEUDO_PARAMETERS = {"AWS::Partition", "AWS::Region", "AWS::AccountId"}


def target(resource):
    """What a policy statement's Resource names: the resource ("JobsQueue"), or a path under it
    ("JobsTable/index/name" for "${JobsTable.Arn}/index/name"), so that a table and its indexes
    stay apart; else the one template name it is built from, or None if not exactly one."""
    sub = resource.get("Fn::Sub") if isinstance(resource, dict) else None
    if isinstance(sub, str):
        match = re.fullmatch(r"\$\{(\w+)\.Arn\}(.+)", sub)
        if match:
            return match[1] + match[2]
    named = refs(resource) - PSEUDO_PARAMETERS
    return named.pop() if len(named) == 1 else None


FUNCTIONS = {
    "GenerateFunction": ("api", "GenerateRole"),
    "JobStatusFunction": ("status", "StatusRole"),
    "WorkerFunction": ("worker", "WorkerRole"),
    "RecoveryFunction": ("recovery", "RecoveryRole"),
}

UNFINISHED_INDEX = "unfinished-updated_at-index"

# What each function may do, and to which resources: exactly this, nothing more.
EXPECTED_PERMISSIONS = {
    "GenerateRole": {
        ("logs:CreateLogStream", "GenerateLogGroup"),
        ("logs:PutLogEvents", "GenerateLogGroup"),
        ("dynamodb:PutItem", "JobsTable"),
        ("dynamodb:GetItem", "JobsTable"),
        ("dynamodb:UpdateItem", "JobsTable"),
        ("sqs:SendMessage", "JobsQueue"),
    },
    "StatusRole": {
        ("logs:CreateLogStream", "StatusLogGroup"),
        ("logs:PutLogEvents", "StatusLogGroup"),
        ("dynamodb:GetItem", "JobsTable"),
        ("dynamodb:Query", "JobsTable/index/owner-created_at-index"),
        ("dynamodb:UpdateItem", "JobsTable"),
    },
    "WorkerRole": {
        ("logs:CreateLogStream", "WorkerLogGroup"),
        ("logs:PutLogEvents", "WorkerLogGroup"),
        ("sqs:ReceiveMessage", "JobsQueue"),
        ("sqs:DeleteMessage", "JobsQueue"),
        ("sqs:GetQueueAttributes", "JobsQueue"),
        ("sqs:ChangeMessageVisibility", "JobsQueue"),
        ("dynamodb:UpdateItem", "JobsTable"),
        ("s3:PutObject", "ArtifactsBucket/artifacts/*"),
        ("s3:DeleteObject", "ArtifactsBucket/artifacts/*"),
        ("bedrock:InvokeModel", "AllowedModelIds"),
        # ConverseStream, which the worker calls, needs this one.
        ("bedrock:InvokeModelWithResponseStream", "AllowedModelIds"),
    },
    "RecoveryRole": {
        ("logs:CreateLogStream", "RecoveryLogGroup"),
        ("logs:PutLogEvents", "RecoveryLogGroup"),
        ("sqs:ReceiveMessage", "DeadLetterQueue"),
        ("sqs:DeleteMessage", "DeadLetterQueue"),
        ("sqs:GetQueueAttributes", "DeadLetterQueue"),
        ("sqs:ChangeMessageVisibility", "DeadLetterQueue"),
        ("dynamodb:GetItem", "JobsTable"),
        ("dynamodb:UpdateItem", "JobsTable"),
        ("dynamodb:Query", f"JobsTable/index/{UNFINISHED_INDEX}"),
        ("sqs:SendMessage", "JobsQueue"),
        ("s3:DeleteObject", "ArtifactsBucket/artifacts/*"),
    },
    # Generated by SAM for the sweep's ScheduleV2 event: EventBridge Scheduler's role.
    "RecoveryFunctionSweepRole": {
        ("lambda:InvokeFunction", "RecoveryFunction"),
    },
}

# X-Ray's actions have no resource-level permissions: "*" is the narrowest there is.
UNSCOPABLE = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}


def statements(role):
    for policy in role["Properties"].get("Policies", []):
        yield from policy["PolicyDocument"]["Statement"]


def grants(name, role):
    """(action, target) for every action the role allows on a resource it names; fails on
    wildcard actions, managed policies, and Resource "*" beyond X-Ray."""
    assert "ManagedPolicyArns" not in role["Properties"], f"{name}: managed policies are too broad"
    granted = set()
    for statement in statements(role):
        assert statement["Effect"] == "Allow"
        actions = as_list(statement["Action"])
        for action in actions:
            assert "*" not in action, f"{name}: wildcard action {action}"
        if statement["Resource"] == "*":
            assert set(actions) <= UNSCOPABLE, f"{name}: Resource * for {actions}"
            continue
        targets = {target(resource) for resource in as_list(statement["Resource"])}
        assert len(targets) == 1 and None not in targets, f"{name}: {statement['Resource']}"
        granted |= {(action, t) for action in actions for t in targets}
    return granted


def test_functions_are_rust_on_al2023_with_their_binaries(source, resources):
    for name, (binary, role) in FUNCTIONS.items():
        raw = source["Resources"][name]
        assert raw["Metadata"]["BuildMethod"] == "rust-cargolambda"
        assert raw["Metadata"]["BuildProperties"]["Binary"] == binary
        props = resources[name]["Properties"]
        assert props["Runtime"] == "provided.al2023"
        assert props["Handler"] == "bootstrap"
        assert props["Architectures"] == [{"Ref": "Architecture"}]
        assert props["TracingConfig"] == {"Mode": "Active"}
        assert props["Role"] == {"Fn::GetAtt": [role, "Arn"]}
        log_group_name = props["LoggingConfig"]["LogGroup"]["Ref"]
        assert ("logs:PutLogEvents", log_group_name) in EXPECTED_PERMISSIONS[role], f"{name} logs where it may not"
        log_group = resources[log_group_name]
        assert log_group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    assert source["Parameters"]["Architecture"]["Default"] == "arm64"
    assert set(source["Parameters"]["Architecture"]["AllowedValues"]) == {"arm64", "x86_64"}


def test_each_role_grants_exactly_what_its_function_uses(resources):
    roles = of_type(resources, "AWS::IAM::Role")
    assert set(roles) == set(EXPECTED_PERMISSIONS), "no role is generated behind our back"
    for name, role in roles.items():
        assert grants(name, role) == EXPECTED_PERMISSIONS[name], name


def test_only_the_recovery_role_reaches_the_dead_letter_queue_and_the_unfinished_index(resources):
    # A target may be a pattern ("JobsTable/index/*", "JobsTable*"): it reaches what it matches.
    guarded = ["DeadLetterQueue", f"JobsTable/index/{UNFINISHED_INDEX}"]
    reaching = {
        resource: {name for name, role in of_type(resources, "AWS::IAM::Role").items()
                   for _, t in grants(name, role) if fnmatch.fnmatchcase(resource, t)}
        for resource in guarded
    }
    assert reaching == {resource: {"RecoveryRole"} for resource in guarded}


def test_the_worker_writes_only_under_artifacts_and_invokes_only_allowed_models(resources):
    worker = {s["Sid"]: s for s in statements(resources["WorkerRole"])}
    assert worker["WriteArtifacts"]["Resource"] == {"Fn::Sub": "${ArtifactsBucket.Arn}/artifacts/*"}
    arns = json.dumps(worker["InvokeAllowedModels"]["Resource"])
    assert "foundation-model/" in arns and "inference-profile/" in arns
    assert "foundation-model/*" not in arns and "inference-profile/*" not in arns
    status = {s["Sid"]: s for s in statements(resources["StatusRole"])}
    assert status["ListOwnersJobs"]["Resource"] == {
        "Fn::Sub": "${JobsTable.Arn}/index/owner-created_at-index"
    }
    recovery = {s["Sid"]: s for s in statements(resources["RecoveryRole"])}
    assert recovery["FindStrandedJobs"]["Resource"] == {
        "Fn::Sub": f"${{JobsTable.Arn}}/index/{UNFINISHED_INDEX}"
    }


def test_function_roles_trust_only_lambda_in_this_account_and_the_schedules_only_the_scheduler(resources):
    function_roles = {role for _, role in FUNCTIONS.values()}
    for name, role in of_type(resources, "AWS::IAM::Role").items():
        (trust,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        assert trust["Effect"] == "Allow" and as_list(trust["Action"]) == ["sts:AssumeRole"], name
        if name in function_roles:
            assert trust["Principal"] == {"Service": "lambda.amazonaws.com"}, name
            assert trust["Condition"]["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}
        else:
            assert name == "RecoveryFunctionSweepRole", name
            assert as_list(trust["Principal"]["Service"]) == ["scheduler.amazonaws.com"], name


@pytest.mark.parametrize("bucket", ["ArtifactsBucket", "WebBucket"])
def test_buckets_are_private_encrypted_and_refuse_plain_http(resources, bucket):
    props = resources[bucket]["Properties"]
    block = props["PublicAccessBlockConfiguration"]
    assert all(block[flag] is True for flag in
               ["BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"])
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert props["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    (policy,) = [p for p in of_type(resources, "AWS::S3::BucketPolicy").values()
                 if p["Properties"]["Bucket"] == {"Ref": bucket}]
    denials = [s for s in policy["Properties"]["PolicyDocument"]["Statement"] if s["Effect"] == "Deny"]
    assert any(
        s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        and s["Action"] == "s3:*"
        and {json.dumps(r) for r in s["Resource"]}
        == {json.dumps({"Fn::GetAtt": [bucket, "Arn"]}), json.dumps({"Fn::Sub": f"${{{bucket}.Arn}}/*"})}
        for s in denials
    ), f"{bucket} must deny requests without TLS"
    allows = [s for s in policy["Properties"]["PolicyDocument"]["Statement"] if s["Effect"] == "Allow"]
    for allow in allows:
        assert allow["Principal"] != "*" and "AWS" not in allow["Principal"]


def test_artifacts_expire_and_the_web_ui_is_served_over_https_through_oac(resources):
    rules = resources["ArtifactsBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    assert rules[0]["ExpirationInDays"] == {"Ref": "ArtifactRetentionDays"}
    config = resources["WebDistribution"]["Properties"]["DistributionConfig"]
    assert config["DefaultCacheBehavior"]["ViewerProtocolPolicy"] in {"redirect-to-https", "https-only"}
    (origin,) = config["Origins"]
    assert origin["OriginAccessControlId"] == {"Fn::GetAtt": ["WebOriginAccessControl", "Id"]}
    assert "CustomOriginConfig" not in origin, "no public website endpoint over HTTP"
    web_policy = resources["WebBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    (read,) = [s for s in web_policy if s["Effect"] == "Allow"]
    assert read["Principal"] == {"Service": "cloudfront.amazonaws.com"}
    assert read["Action"] == "s3:GetObject"
    assert "WebDistribution" in refs(read["Condition"])


def test_the_queue_outlasts_the_worker_and_fails_over_to_a_watched_dead_letter_queue(resources):
    queue = resources["JobsQueue"]["Properties"]
    worker_timeout = resources["WorkerFunction"]["Properties"]["Timeout"]
    assert queue["VisibilityTimeout"] >= 6 * worker_timeout
    assert queue["SqsManagedSseEnabled"] is True
    assert resources["DeadLetterQueue"]["Properties"]["SqsManagedSseEnabled"] is True
    redrive = queue["RedrivePolicy"]
    assert redrive["deadLetterTargetArn"] == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
    assert redrive["maxReceiveCount"] == {"Ref": "QueueMaxReceiveCount"}
    alarms = of_type(resources, "AWS::CloudWatch::Alarm").values()
    # The recovery function empties the dead-letter queue at once: count what arrives there.
    assert any(
        a["Properties"]["MetricName"] == "NumberOfMessagesReceived"
        and "DeadLetterQueue" in refs(a["Properties"]["Dimensions"])
        for a in alarms
    )


def mappings(resources):
    """Each event source mapping's properties, by the function it feeds."""
    by_function = {}
    for mapping in of_type(resources, "AWS::Lambda::EventSourceMapping").values():
        by_function.setdefault(mapping["Properties"]["FunctionName"]["Ref"], []).append(mapping["Properties"])
    return by_function


def test_the_worker_reports_partial_batch_failures_with_bounded_concurrency(resources):
    assert set(mappings(resources)) == {"WorkerFunction", "RecoveryFunction"}
    (props,) = mappings(resources)["WorkerFunction"]
    assert props["EventSourceArn"] == {"Fn::GetAtt": ["JobsQueue", "Arn"]}
    assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert props["BatchSize"] == {"Ref": "WorkerBatchSize"}
    assert props["MaximumBatchingWindowInSeconds"] == {"Ref": "WorkerBatchingWindowSeconds"}
    assert props["ScalingConfig"] == {"MaximumConcurrency": {"Ref": "WorkerMaximumConcurrency"}}


def test_the_recovery_function_settles_dead_letters_with_partial_batch_failures(resources):
    (props,) = mappings(resources)["RecoveryFunction"]
    assert props["EventSourceArn"] == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
    assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    # The function's minute is sized for at most ten dead letters (SQS's limit without a window).
    assert isinstance(props["BatchSize"], int) and 1 <= props["BatchSize"] <= 10


def test_the_dead_letter_queue_outlasts_the_recovery_function_and_its_source_queue(resources):
    dead_letters = resources["DeadLetterQueue"]["Properties"]
    recovery_timeout = resources["RecoveryFunction"]["Properties"]["Timeout"]
    assert dead_letters["VisibilityTimeout"] >= 6 * recovery_timeout
    # A dead letter keeps its original enqueue time: it must not expire before its source would.
    jobs = resources["JobsQueue"]["Properties"]
    assert dead_letters["MessageRetentionPeriod"] > jobs["MessageRetentionPeriod"]


def test_a_schedule_sweeps_with_the_recovery_function_and_may_invoke_nothing_else(resources):
    (props,) = [s["Properties"] for s in of_type(resources, "AWS::Scheduler::Schedule").values()]
    assert props["ScheduleExpression"] == {"Fn::Sub": "rate(${SweepIntervalMinutes} minutes)"}
    schedule_target = props["Target"]
    assert schedule_target["Arn"] == {"Fn::GetAtt": ["RecoveryFunction", "Arn"]}
    assert json.loads(schedule_target["Input"]) == {"sweep": {}}
    assert schedule_target["RetryPolicy"] == {"MaximumRetryAttempts": 0}, "the next sweep makes up"
    role, attribute = schedule_target["RoleArn"]["Fn::GetAtt"]
    assert attribute == "Arn"
    assert grants(role, resources[role]) == {("lambda:InvokeFunction", "RecoveryFunction")}
    # Schedule names are unique per account and region: a fixed one would stop a second stack.
    assert "Name" not in props, props.get("Name")


def worker_retry_cap_seconds():
    source = (ROOT / "functions" / "worker" / "src" / "lib.rs").read_text()
    match = re.search(r'"RETRY_MAX_SECONDS",\s*(\d+)', source)
    assert match, "the worker no longer reads RETRY_MAX_SECONDS with a default: update this test"
    return int(match[1])


def test_recovery_waits_out_the_workers_retry_backoff_and_sweeps_at_a_valid_rate(source, resources):
    params = source["Parameters"]
    recover_after = params["RecoverAfterSeconds"]
    # A job waiting for its retry is not stranded: the backoff's cap (the template leaves the
    # worker's default) must always be shorter than RecoverAfterSeconds.
    assert "RETRY_MAX_SECONDS" not in resources["WorkerFunction"]["Properties"]["Environment"]["Variables"]
    assert recover_after["MinValue"] > worker_retry_cap_seconds()
    assert recover_after["MinValue"] <= recover_after["Default"] <= recover_after["MaxValue"]
    sweep = params["SweepIntervalMinutes"]
    # "rate(1 minutes)" is invalid: the unit is singular only for 1.
    assert sweep["MinValue"] >= 2
    assert sweep["MinValue"] <= sweep["Default"] <= sweep["MaxValue"]
    assert "SweepIntervalMinutes" in refs(
        [s["Properties"]["ScheduleExpression"] for s in of_type(resources, "AWS::Scheduler::Schedule").values()]
    )


def test_dead_letters_and_recovery_failures_alarm_to_the_topic_when_an_email_is_set(resources):
    alarms = {name: a["Properties"] for name, a in of_type(resources, "AWS::CloudWatch::Alarm").items()}
    assert set(alarms) == {"DeadLetterAlarm", "RecoveryErrorAlarm"}
    dead_letters = alarms["DeadLetterAlarm"]
    assert (dead_letters["Namespace"], dead_letters["MetricName"], dead_letters["Statistic"]) == (
        "AWS/SQS", "NumberOfMessagesReceived", "Sum")
    assert dead_letters["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn::GetAtt": ["DeadLetterQueue", "QueueName"]}}]
    errors = alarms["RecoveryErrorAlarm"]
    assert (errors["Namespace"], errors["MetricName"], errors["Statistic"]) == ("AWS/Lambda", "Errors", "Sum")
    assert errors["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": "RecoveryFunction"}}]
    for name, alarm in alarms.items():
        # The first one counts.
        assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanOrEqualToThreshold", 1), name
        assert alarm["TreatMissingData"] == "notBreaching", name
        assert resolve(alarm["AlarmActions"], {"HasAlarmEmail": True}) == [{"Ref": "AlarmTopic"}], name
        assert resolve(alarm["AlarmActions"], {"HasAlarmEmail": False}) == {"Ref": "AWS::NoValue"}, name
    topic = resources["AlarmTopic"]
    assert topic["Condition"] == "HasAlarmEmail"
    assert topic["Properties"]["Subscription"] == [{"Protocol": "email", "Endpoint": {"Ref": "AlarmEmail"}}]


def routes(resources):
    body = resources["JobsApi"]["Properties"]["Body"]
    for path, methods in body["paths"].items():
        for method, operation in methods.items():
            if method != "parameters":
                yield path, method, operation


@pytest.mark.parametrize("mode,scheme", [("cognito", "CognitoAuthorizer"), ("iam", "AWS_IAM")])
def test_an_authorizer_guards_every_route_but_options(resources, mode, scheme):
    seen = []
    for path, method, operation in routes(resources):
        assert method != "options", "preflights are answered by the CORS configuration"
        security = resolve(operation.get("security"), {"UseIamAuth": mode == "iam"})
        assert security == [{scheme: []}], f"{method} {path} in {mode} mode: {security}"
        seen.append(path)
    assert set(seen) == {"/generate", "/jobs", "/jobs/{id}", "/jobs/{id}/cancel", "/$default"}
    schemes = resources["JobsApi"]["Properties"]["Body"]["components"]["securitySchemes"]
    jwt = schemes["CognitoAuthorizer"]["x-amazon-apigateway-authorizer"]
    assert jwt["type"] == "jwt"
    assert jwt["jwtConfiguration"]["issuer"] == {
        "Fn::Sub": "https://cognito-idp.${AWS::Region}.amazonaws.com/${UserPool}"
    }
    assert jwt["jwtConfiguration"]["audience"] == [{"Ref": "UserPoolClient"}]
    assert schemes["AWS_IAM"]["x-amazon-apigateway-authtype"] == "awsSigv4"


def test_waiting_functions_finish_before_the_http_api_gives_up(resources):
    # The HTTP API ends an integration after 30 s: `Prefer: wait` (25 s at most) and a
    # long-poll (20 s at most) must be answered before, with a margin for the last read.
    api_source = (ROOT / "functions" / "api" / "src" / "lib.rs").read_text()
    status_source = (ROOT / "functions" / "status" / "src" / "lib.rs").read_text()
    prefer_wait = int(re.search(r"pub const PREFER_WAIT_MAX_SECONDS: u64 = (\d+);", api_source)[1])
    long_poll = int(re.search(r"pub const LONG_POLL_MAX_SECONDS: u64 = (\d+);", status_source)[1])
    generate = resources["GenerateFunction"]["Properties"]["Timeout"]
    status = resources["JobStatusFunction"]["Properties"]["Timeout"]
    assert prefer_wait + 2 <= generate < 30
    assert long_poll + 2 <= status < 30


def test_cors_allows_only_the_web_origin_and_the_stage_is_throttled_and_logged(resources):
    cors = resources["JobsApi"]["Properties"]["Body"]["x-amazon-apigateway-cors"]
    assert cors["allowOrigins"] == [{"Fn::Sub": "https://${WebDistribution.DomainName}"}]
    # What the functions' own CORS layer allows (shared/src/http/mod.rs), and no more.
    assert set(cors["allowHeaders"]) == {"authorization", "content-type", "idempotency-key", "prefer"}
    assert set(cors["exposeHeaders"]) == {"location", "preference-applied"}
    stage = resources["JobsApiApiGatewayDefaultStage"]["Properties"]
    assert stage["DefaultRouteSettings"] == {
        "ThrottlingRateLimit": {"Ref": "ThrottlingRateLimit"},
        "ThrottlingBurstLimit": {"Ref": "ThrottlingBurstLimit"},
    }
    assert stage["AccessLogSettings"]["DestinationArn"] == {"Fn::GetAtt": ["ApiAccessLogGroup", "Arn"]}
    assert "$context.requestId" in stage["AccessLogSettings"]["Format"]


def test_api_gateway_may_invoke_each_function_only_on_its_routes(resources):
    permissions = of_type(resources, "AWS::Lambda::Permission").values()
    by_function = {}
    for permission in permissions:
        props = permission["Properties"]
        assert props["Principal"] == "apigateway.amazonaws.com"
        by_function.setdefault(props["FunctionName"]["Ref"], set()).add(props["SourceArn"]["Fn::Sub"].split("${JobsApi}")[1])
    assert by_function == {
        "GenerateFunction": {"/*/*/generate"},
        "JobStatusFunction": {"/*/*/jobs", "/*/*/jobs/*", "/*/$default"},
    }


def test_the_table_has_ttl_the_owner_and_unfinished_indexes_recovery_and_encryption(resources):
    props = resources["JobsTable"]["Properties"]
    assert props["KeySchema"] == [{"AttributeName": "job_id", "KeyType": "HASH"}]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    indexes = {index["IndexName"]: index for index in props["GlobalSecondaryIndexes"]}
    assert set(indexes) == {"owner-created_at-index", UNFINISHED_INDEX}
    assert indexes["owner-created_at-index"]["KeySchema"] == [
        {"AttributeName": "owner", "KeyType": "HASH"},
        {"AttributeName": "created_at", "KeyType": "RANGE"},
    ]
    # The sweep's index: sparse (only unfinished jobs carry `unfinished`), keys only.
    unfinished = indexes[UNFINISHED_INDEX]
    assert unfinished["KeySchema"] == [
        {"AttributeName": "unfinished", "KeyType": "HASH"},
        {"AttributeName": "updated_at", "KeyType": "RANGE"},
    ]
    assert unfinished["Projection"] == {"ProjectionType": "KEYS_ONLY"}
    types = {a["AttributeName"]: a["AttributeType"] for a in props["AttributeDefinitions"]}
    assert types == dict.fromkeys(["job_id", "owner", "created_at", "unfinished", "updated_at"], "S")
    adapter = (ROOT / "shared" / "src" / "adapters" / "dynamodb.rs").read_text()
    assert f'UNFINISHED_INDEX: &str = "{UNFINISHED_INDEX}"' in adapter, "the code queries another index"
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert props["SSESpecification"] == {"SSEEnabled": True}


def test_cognito_signs_up_by_email_with_a_real_password_policy(resources):
    pool = resources["UserPool"]["Properties"]
    assert pool["UsernameAttributes"] == ["email"]
    assert pool["AutoVerifiedAttributes"] == ["email"]
    policy = pool["Policies"]["PasswordPolicy"]
    assert policy["MinimumLength"] >= 12
    assert all(policy[k] for k in ["RequireLowercase", "RequireUppercase", "RequireNumbers", "RequireSymbols"])
    client = resources["UserPoolClient"]["Properties"]
    assert client["GenerateSecret"] is False
    assert set(client["ExplicitAuthFlows"]) == {
        "ALLOW_USER_PASSWORD_AUTH", "ALLOW_USER_SRP_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"}
    assert client["AccessTokenValidity"] == {"Ref": "AccessTokenValidityMinutes"}


def test_functions_get_the_contracts_environment(resources):
    env = {name: set(resources[name]["Properties"]["Environment"]["Variables"]) for name in FUNCTIONS}
    assert env["GenerateFunction"] == {
        "JOBS_TABLE", "JOBS_QUEUE_URL", "ARTIFACTS_BUCKET", "MODEL_ID", "ALLOWED_MODEL_IDS", "MAX_PROMPT_CHARS",
        "MAX_OUTPUT_TOKENS", "JOB_TTL_DAYS", "ALLOWED_ORIGIN", "COGNITO_REVOCATION_CHECK",
        "MAX_JOBS_PER_MINUTE"}
    assert env["JobStatusFunction"] == {
        "JOBS_TABLE", "ARTIFACTS_BUCKET", "ALLOWED_ORIGIN", "COGNITO_REVOCATION_CHECK"}
    assert env["WorkerFunction"] == {
        "JOBS_TABLE", "ARTIFACTS_BUCKET", "JOBS_QUEUE_URL", "MAX_ATTEMPTS", "STREAM_FLUSH_MS",
        "MODEL_PRICES"}
    assert env["RecoveryFunction"] == {
        "JOBS_TABLE", "JOBS_QUEUE_URL", "DEAD_LETTER_QUEUE_URL", "ARTIFACTS_BUCKET", "MAX_ATTEMPTS",
        "RECOVER_AFTER_SECONDS"}
    recovery = resources["RecoveryFunction"]["Properties"]["Environment"]["Variables"]
    assert recovery["JOBS_TABLE"] == {"Ref": "JobsTable"}
    assert recovery["JOBS_QUEUE_URL"] == {"Ref": "JobsQueue"}
    assert recovery["DEAD_LETTER_QUEUE_URL"] == {"Ref": "DeadLetterQueue"}
    assert recovery["RECOVER_AFTER_SECONDS"] == {"Ref": "RecoverAfterSeconds"}
    # The sweep judges a job's model calls left by the worker's own limit.
    worker = resources["WorkerFunction"]["Properties"]["Environment"]["Variables"]
    assert recovery["MAX_ATTEMPTS"] == worker["MAX_ATTEMPTS"] == {"Ref": "MaxAttempts"}
    # The revocation check covers every route, reads included.
    for name in ("GenerateFunction", "JobStatusFunction"):
        variables = resources[name]["Properties"]["Environment"]["Variables"]
        assert variables["COGNITO_REVOCATION_CHECK"] == {"Ref": "CognitoRevocationCheck"}


def test_the_recovery_function_gets_every_variable_its_code_requires(resources):
    code = (ROOT / "functions" / "recovery" / "src" / "lib.rs").read_text()
    required = set(re.findall(r'env\.required\("(\w+)"\)', code))
    assert required, "the recovery code no longer reads env.required(...): update this test"
    variables = set(resources["RecoveryFunction"]["Properties"]["Environment"]["Variables"])
    assert required - variables == set(), "the recovery function would not start"


def test_the_sample_events_match_the_templates_routes_and_functions(resources):
    function_of_path = {}
    for path, _, operation in routes(resources):
        uri = operation["x-amazon-apigateway-integration"]["uri"]
        function_of_path[path] = uri["Fn::GetAtt"][0]
    expected = {
        "generate.json": "GenerateFunction",
        "generate-invalid.json": "GenerateFunction",
        "job-status.json": "JobStatusFunction",
        "job-cancel.json": "JobStatusFunction",
        "jobs-list.json": "JobStatusFunction",
    }
    for file, function in expected.items():
        event = json.loads((ROOT / "events" / file).read_text())
        method, path = event["routeKey"].split(" ", 1)
        assert event["requestContext"]["http"]["method"] == method
        assert function_of_path[path] == function, file
        assert event["requestContext"]["authorizer"]["jwt"]["claims"]["token_use"] == "access"
    # SQS samples: the queue named at the end of the ARN (…:<stack>-<LogicalId>) feeds the function.
    consumer_of_queue = {props["EventSourceArn"]["Fn::GetAtt"][0]: function
                         for function, each in mappings(resources).items() for props in each}
    for file, function in {"worker-batch.json": "WorkerFunction",
                           "recovery-dead-letters.json": "RecoveryFunction"}.items():
        batch = json.loads((ROOT / "events" / file).read_text())
        assert batch["Records"], file
        for record in batch["Records"]:
            assert record["eventSource"] == "aws:sqs", file
            queue = record["eventSourceARN"].split(":")[-1].rsplit("-", 1)[-1]
            assert consumer_of_queue.get(queue) == function, file
            assert set(json.loads(record["body"])) == {"job_id"}, file
    sweep = json.loads((ROOT / "events" / "recovery-sweep.json").read_text())
    (schedule,) = of_type(resources, "AWS::Scheduler::Schedule").values()
    assert sweep == json.loads(schedule["Properties"]["Target"]["Input"])


def test_the_outputs_hold_what_the_web_ui_and_the_deploy_script_need(source):
    outputs = set(source["Outputs"])
    assert {
        "ApiUrl", "WebUrl", "WebBucketName", "WebDistributionId", "UserPoolId", "UserPoolClientId",
        "ArtifactsBucketName", "JobsQueueUrl", "JobsTableName", "ModelId", "AllowedModelIds",
        "MaxOutputTokens",
    } <= outputs
    script = (ROOT / "scripts" / "stack.py").read_text()
    for used in set(re.findall(r'out\["(\w+)"\]', script)):
        assert used in outputs, f"scripts/stack.py reads output {used}, which the template lacks"


def test_the_deployed_web_config_has_the_keys_the_local_one_has():
    # The web UI reads one config.json shape: what scripts/stack.py writes when deploying
    # must carry every key the local stack serves (but its "local" marker).
    def keys(source, function, end):
        body = source.split(function, 1)[1].split(end, 1)[0]
        return set(re.findall(r'"(\w+)":', body))

    deployed = keys((ROOT / "scripts" / "stack.py").read_text(), "def web_config", "\n\n\n")
    local = keys((ROOT / "local" / "src" / "main.rs").read_text(), "fn web_config", "\n}\n")
    assert "maxAttempts" in local and "maxPromptChars" in local
    assert deployed == local - {"local"}
