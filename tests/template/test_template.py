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
        match = re.fullmatch(r"\$\{(\w+)\.\w*Arn\}(.+)", sub)
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
        ("dynamodb:BatchGetItem", "JobsTable"),
        ("dynamodb:UpdateItem", "JobsTable"),
        ("sqs:SendMessage", "JobsQueue"),
    },
    "StatusRole": {
        ("logs:CreateLogStream", "StatusLogGroup"),
        ("logs:PutLogEvents", "StatusLogGroup"),
        ("dynamodb:GetItem", "JobsTable"),
        ("dynamodb:BatchGetItem", "JobsTable"),
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
        ("dynamodb:GetItem", "JobsTable"),
        ("dynamodb:BatchGetItem", "JobsTable"),
        ("dynamodb:UpdateItem", "JobsTable"),
        # Text pieces only (a condition on the leading key, checked below).
        ("dynamodb:PutItem", "JobsTable"),
        ("appsync:EventPublish", "JobsChannelNamespace/*"),
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
        ("dynamodb:BatchGetItem", "JobsTable"),
        ("dynamodb:UpdateItem", "JobsTable"),
        ("dynamodb:Query", f"JobsTable/index/{UNFINISHED_INDEX}"),
        ("sqs:SendMessage", "JobsQueue"),
        ("s3:DeleteObject", "ArtifactsBucket/artifacts/*"),
    },
    # The Event API's subscribe handler: it marks a job watched, nothing more.
    "LiveDataSourceRole": {
        ("dynamodb:UpdateItem", "JobsTable"),
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
        elif name == "LiveDataSourceRole":
            assert trust["Principal"] == {"Service": "appsync.amazonaws.com"}, name
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
    alarms = {name: a["Properties"] for name, a in of_type(resources, "AWS::CloudWatch::Alarm").items()
              if name in {"DeadLetterAlarm", "RecoveryErrorAlarm"}}
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
    assert set(seen) == {"/generate", "/jobs", "/jobs/{id}", "/jobs/{id}/cancel", "/usage", "/$default"}
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
        "JobStatusFunction": {"/*/*/jobs", "/*/*/jobs/*", "/*/*/usage", "/*/$default"},
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
    # Every function: the table, the metrics namespace and the budgets (Globals).
    shared = {"JOBS_TABLE", "METRICS_NAMESPACE", "BUDGET_TOKENS_PER_DAY", "BUDGET_USD_PER_MONTH"}
    assert env["GenerateFunction"] == shared | {
        "JOBS_QUEUE_URL", "ARTIFACTS_BUCKET", "MODEL_ID", "ALLOWED_MODEL_IDS", "MAX_PROMPT_CHARS",
        "MAX_OUTPUT_TOKENS", "JOB_TTL_DAYS", "ALLOWED_ORIGIN", "COGNITO_REVOCATION_CHECK",
        "MAX_JOBS_PER_MINUTE", "MODEL_PRICES"}
    assert env["JobStatusFunction"] == shared | {
        "ARTIFACTS_BUCKET", "ALLOWED_ORIGIN", "COGNITO_REVOCATION_CHECK"}
    assert env["WorkerFunction"] == shared | {
        "ARTIFACTS_BUCKET", "JOBS_QUEUE_URL", "MAX_ATTEMPTS", "STREAM_FLUSH_MS", "MODEL_PRICES",
        "EVENTS_HTTP_URL"}
    assert env["RecoveryFunction"] == shared | {
        "JOBS_QUEUE_URL", "DEAD_LETTER_QUEUE_URL", "ARTIFACTS_BUCKET", "MAX_ATTEMPTS",
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


# ---------------------------------------------------------------------------------------------
# Cost, budgets and metrics (issue 10).
# ---------------------------------------------------------------------------------------------

NAMESPACE = {"Fn::Sub": "BedrockJobs/${AWS::StackName}"}

# What the functions write (EMF, in METRICS_NAMESPACE): metric -> (dimension, its values), or
# None for a metric the dashboard and alarms read without a dimension.
METRICS = {
    "Submissions": ("Outcome", ["accepted", "repeated", "invalid_request", "rate_limited",
                                "budget_exceeded", "unavailable", "invalid_json",
                                "unsupported_model", "prompt_too_long", "internal"]),
    "BudgetRefusals": ("Period", ["day", "month"]),
    "JobsFinished": ("Outcome", ["succeeded", "failed", "cancelled"]),
    "JobsFailed": ("ErrorCode", ["enqueue_failed", "model_unavailable", "model_error", "worker_error"]),
    "QueueWait": None,
    "Retries": None,
    "ModelLatency": None,
    "TimeToFirstToken": None,
    "InputTokens": None,
    "OutputTokens": None,
    "CostUsd": None,
    "ModelThrottles": None,
    "Recoveries": ("Action", ["requeued", "failed", "dead_lettered"]),
}

BUDGETS = {"BudgetTokensPerDay": "BUDGET_TOKENS_PER_DAY", "BudgetUsdPerMonth": "BUDGET_USD_PER_MONTH"}


def test_the_budgets_reach_the_api_and_the_status_function_and_default_to_none(source, resources):
    for parameter, variable in BUDGETS.items():
        declared = source["Parameters"][parameter]
        assert declared["Type"] == "String" and declared["Default"] == "", parameter
        for function in ("GenerateFunction", "JobStatusFunction"):
            variables = resources[function]["Properties"]["Environment"]["Variables"]
            assert variables[variable] == {"Ref": parameter}, f"{function} lacks {variable}"
    # CloudFormation refuses what the functions could not read as a budget.
    def accepts(parameter, value):
        return re.fullmatch(source["Parameters"][parameter]["AllowedPattern"], value) is not None

    # Above zero (shared/src/config.rs refuses a zero budget at start); dollars to the
    # nano-dollar (nine decimals) that the functions count in.
    for value in ["", "1", "250000", "100000000000000"]:
        assert accepts("BudgetTokensPerDay", value), value
    for value in ["0", "000", "1.5", "-1", "1e6", "10k", " 5", "5 ", "1000000000000000"]:
        assert not accepts("BudgetTokensPerDay", value), value
    for value in ["", "5", "5.00", "0.25", "0.000000001", "1000.5", "999999999.999999999"]:
        assert accepts("BudgetUsdPerMonth", value), value
    for value in ["0", "0.00", "00.0", "5.", ".5", "-5", "$5", "5,00", "1e3", "five",
                  "0.0000000001", "1000000000"]:
        assert not accepts("BudgetUsdPerMonth", value), value


def test_the_api_prices_reservations_with_the_workers_prices(resources):
    api = resources["GenerateFunction"]["Properties"]["Environment"]["Variables"]
    worker = resources["WorkerFunction"]["Properties"]["Environment"]["Variables"]
    assert api["MODEL_PRICES"] == worker["MODEL_PRICES"] == {"Ref": "ModelPrices"}


def test_usage_is_served_by_the_status_function_behind_the_authorizer_like_the_jobs(resources):
    operations = {path: (method, operation) for path, method, operation in routes(resources)}
    method, usage = operations["/usage"]
    # Any method, as GET /jobs: the function answers a wrong method and CORS itself.
    assert method == "x-amazon-apigateway-any-method"
    assert usage == operations["/jobs"][1]
    assert usage["x-amazon-apigateway-integration"]["uri"] == {"Fn::GetAtt": ["JobStatusFunction", "Arn"]}
    for mode, scheme in [("cognito", "CognitoAuthorizer"), ("iam", "AWS_IAM")]:
        assert resolve(usage["security"], {"UseIamAuth": mode == "iam"}) == [{scheme: []}]
    invocable = [p["Properties"]["SourceArn"]["Fn::Sub"].split("${JobsApi}")[1]
                 for p in of_type(resources, "AWS::Lambda::Permission").values()
                 if p["Properties"]["FunctionName"] == {"Ref": "JobStatusFunction"}]
    assert any(fnmatch.fnmatchcase("/prod/GET/usage", pattern) for pattern in invocable)


def test_reservations_and_their_settlement_are_allowed_in_one_transaction_and_no_more(resources):
    def table_actions(role):
        return {a for a, t in grants(role, resources[role]) if t == "JobsTable"}

    # TransactWriteItems is authorized action by action: the api's Put of the job and Update
    # of the usage items, and its GetItem of the budget override. Nothing broader than before.
    # A job is read whole as its state (GetItem), then its request and text (BatchGetItem).
    assert table_actions("GenerateRole") == {
        "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:GetItem", "dynamodb:BatchGetItem"}
    # The terminal transition settles the reservation: UpdateItems, and the job read.
    for role in ("WorkerRole", "StatusRole", "RecoveryRole"):
        assert {"dynamodb:UpdateItem", "dynamodb:GetItem", "dynamodb:BatchGetItem"} <= table_actions(role), role
    for role in ("StatusRole", "RecoveryRole"):
        assert "dynamodb:PutItem" not in table_actions(role), role
    # The worker puts text pieces only: never a job's state, request or a ledger.
    puts = [s for s in statements(resources["WorkerRole"]) if "dynamodb:PutItem" in as_list(s["Action"])]
    assert [s["Condition"] for s in puts] == [
        {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["*#text#*"]}}]
    for name, role in of_type(resources, "AWS::IAM::Role").items():
        for action, _ in grants(name, role):
            assert action not in {"dynamodb:BatchWriteItem", "dynamodb:DeleteItem", "dynamodb:Scan"}, name


def test_metrics_land_in_one_namespace_per_stack_for_every_function(resources):
    for name in FUNCTIONS:
        variables = resources[name]["Properties"]["Environment"]["Variables"]
        assert variables["METRICS_NAMESPACE"] == NAMESPACE, name
    # The alarms and the dashboard read that same namespace.
    for name, alarm in of_type(resources, "AWS::CloudWatch::Alarm").items():
        props = alarm["Properties"]
        namespaces = [props["Namespace"]] if "Namespace" in props else [
            m["MetricStat"]["Metric"]["Namespace"] for m in props["Metrics"] if "MetricStat" in m]
        for namespace in namespaces:
            assert namespace in (NAMESPACE, "AWS/SQS", "AWS/Lambda"), name


def test_every_alarm_tells_the_topic_when_an_email_is_set_and_ignores_missing_data(resources):
    alarms = of_type(resources, "AWS::CloudWatch::Alarm")
    assert len(alarms) >= 7
    for name, alarm in alarms.items():
        props = alarm["Properties"]
        assert resolve(props["AlarmActions"], {"HasAlarmEmail": True}) == [{"Ref": "AlarmTopic"}], name
        assert resolve(props["AlarmActions"], {"HasAlarmEmail": False}) == {"Ref": "AWS::NoValue"}, name
        assert props["TreatMissingData"] == "notBreaching", name


# Alarm -> (namespace, metric, dimensions, statistic, period, evaluation periods, threshold parameter).
SINGLE_METRIC_ALARMS = {
    "OldestMessageAlarm": ("AWS/SQS", "ApproximateAgeOfOldestMessage",
                           [{"Name": "QueueName", "Value": {"Fn::GetAtt": ["JobsQueue", "QueueName"]}}],
                           "Maximum", 300, 1, "QueueAgeAlarmSeconds"),
    "ThrottleAlarm": (NAMESPACE, "ModelThrottles", None, "Sum", 300, 1, "ThrottleAlarmCount"),
    "ModelLatencyAlarm": (NAMESPACE, "ModelLatency", None, "p95", 300, 3, "ModelLatencyAlarmMs"),
    "DailyCostAlarm": (NAMESPACE, "CostUsd", None, "Sum", 86400, 1, "DailyCostAlarmUsd"),
}

THRESHOLD_DEFAULTS = {
    "QueueAgeAlarmSeconds": 600, "FailureRateAlarmPercent": 10, "ThrottleAlarmCount": 10,
    "ModelLatencyAlarmMs": 30000, "DailyCostAlarmUsd": 10,
}


@pytest.mark.parametrize("name", sorted(SINGLE_METRIC_ALARMS))
def test_the_issues_threshold_alarms_watch_their_metric(source, resources, name):
    namespace, metric, dimensions, statistic, period, evaluations, parameter = SINGLE_METRIC_ALARMS[name]
    props = resources[name]["Properties"]
    assert (props["Namespace"], props["MetricName"]) == (namespace, metric)
    # No dimension: the total over every model, as the functions write it besides [Model].
    assert props.get("Dimensions") == dimensions
    if statistic.startswith("p"):
        assert props["ExtendedStatistic"] == statistic and "Statistic" not in props
    else:
        assert props["Statistic"] == statistic and "ExtendedStatistic" not in props
    assert (props["Period"], props["EvaluationPeriods"]) == (period, evaluations)
    assert props.get("DatapointsToAlarm", evaluations) == evaluations
    assert props["Threshold"] == {"Ref": parameter}
    assert props["ComparisonOperator"] == "GreaterThanThreshold"
    assert source["Parameters"][parameter]["Type"] == "Number"
    assert source["Parameters"][parameter]["Default"] == THRESHOLD_DEFAULTS[parameter]


class _Value(float):
    """A metric math value: a division by zero gives no value (NaN), as in CloudWatch."""

    def _wrap(method):
        def apply(self, other):
            return _Value(getattr(float(self), method)(float(other)))
        return apply

    __add__, __radd__ = _wrap("__add__"), _wrap("__radd__")
    __sub__, __rsub__ = _wrap("__sub__"), _wrap("__rsub__")
    __mul__, __rmul__ = _wrap("__mul__"), _wrap("__rmul__")
    del _wrap

    def __truediv__(self, other):
        return _Value(float("nan") if float(other) == 0 else float(self) / float(other))

    def __rtruediv__(self, other):
        return _Value(float("nan") if float(self) == 0 else float(other) / float(self))


def evaluate_metric_math(metrics, values):
    """The value the alarm's returned expression takes, for one datapoint per metric id
    (None: the metric has no datapoint)."""
    env = dict(values)
    functions = {
        "FILL": lambda value, fill: _Value(fill if value is None else value),
        "IF": lambda condition, when_true, when_false: when_true if condition else when_false,
    }
    pending = [m for m in metrics if "Expression" in m]
    while pending:
        for m in list(pending):
            try:
                env[m["Id"]] = eval(m["Expression"], {"__builtins__": {}, **functions}, env)  # noqa: S307
                pending.remove(m)
            except NameError:
                continue  # depends on an expression not evaluated yet
    (returned,) = [m for m in metrics if m.get("ReturnData", True)]
    return env[returned["Id"]]


def test_the_failure_rate_alarm_is_the_failed_share_of_finished_jobs_over_15_minutes(source, resources):
    props = resources["FailureRateAlarm"]["Properties"]
    assert props["Threshold"] == {"Ref": "FailureRateAlarmPercent"}
    assert props["ComparisonOperator"] == "GreaterThanThreshold"
    assert source["Parameters"]["FailureRateAlarmPercent"]["Default"] == THRESHOLD_DEFAULTS["FailureRateAlarmPercent"]
    metrics = props["Metrics"]
    stats = {m["Id"]: m["MetricStat"] for m in metrics if "MetricStat" in m}
    outcomes = {}
    for metric_id, stat in stats.items():
        metric = stat["Metric"]
        assert (metric["Namespace"], metric["MetricName"]) == (NAMESPACE, "JobsFinished")
        ((dimension, value),) = [(d["Name"], d["Value"]) for d in metric["Dimensions"]]
        assert dimension == "Outcome"
        assert (stat["Period"], stat["Stat"]) == (900, "Sum")
        outcomes[value] = metric_id
    assert set(outcomes) == set(METRICS["JobsFinished"][1])

    def rate(succeeded, failed, cancelled):
        by_id = {outcomes["succeeded"]: succeeded, outcomes["failed"]: failed, outcomes["cancelled"]: cancelled}
        return evaluate_metric_math(metrics, by_id)

    assert rate(9, 1, 0) == pytest.approx(10)
    assert rate(1, 2, 1) == pytest.approx(50)
    assert rate(0, 3, 0) == pytest.approx(100)
    # A quarter hour with nothing finished, or an outcome with no datapoint: no division by zero.
    assert rate(0, 0, 0) == 0
    assert rate(None, None, None) == 0
    assert rate(4, None, None) == 0
    assert rate(None, 1, None) == pytest.approx(100)


def dashboard(resources):
    (board,) = of_type(resources, "AWS::CloudWatch::Dashboard").values()
    text = board["Properties"]["DashboardBody"]["Fn::Sub"]
    assert isinstance(text, str)
    # "0" is a valid JSON number and string content both: what the threshold lines need.
    return text, json.loads(re.sub(r"\$\{[^}]+\}", "0", text))


def dashboard_metrics(body):
    """(namespace, metric, dimensions, options) of every metric of every graph."""
    for widget in body["widgets"]:
        if widget["type"] != "metric":
            continue
        defaults = {k: widget["properties"].get(k) for k in ("stat", "period")}
        for entry in widget["properties"]["metrics"]:
            options = entry[-1] if isinstance(entry[-1], dict) else {}
            plain = [item for item in entry if not isinstance(item, dict)]
            if not plain:
                continue  # a metric math expression
            assert "..." not in plain, "spell metrics out, so that they can be checked"
            namespace, metric, *pairs = plain
            yield namespace, metric, dict(zip(pairs[::2], pairs[1::2])), {**defaults, **options}


def test_the_dashboard_is_json_and_shows_every_metric_the_functions_write(source, resources):
    text, body = dashboard(resources)
    names = set(source["Parameters"]) | set(source["Resources"]) | {"AWS::Region", "AWS::StackName"}
    for used in re.findall(r"\$\{([^}!]+)\}", text):
        assert used.split(".")[0] in names, f"the dashboard refers to {used}"
    ours = "BedrockJobs/0"  # the namespace, after the placeholder
    shown = list(dashboard_metrics(body))
    for metric, dimension in METRICS.items():
        plotted = [(dims, options) for namespace, name, dims, options in shown
                   if (namespace, name) == (ours, metric)]
        assert plotted, f"the dashboard lacks {metric}"
        if dimension is None:
            assert any(dims == {} for dims, _ in plotted), f"{metric}: its total, with no dimension"
        else:
            key, values = dimension
            assert {dims.get(key) for dims, _ in plotted} >= set(values), metric
    assert {o["stat"] for n, m, d, o in shown if (n, m) == (ours, "QueueWait")} >= {"p50", "p95"}
    assert {o["stat"] for n, m, d, o in shown if (n, m) == (ours, "ModelLatency")} >= {"p50", "p95"}
    assert "p95" in {o["stat"] for n, m, d, o in shown if (n, m) == (ours, "TimeToFirstToken")}
    cost_periods = {o["period"] for n, m, d, o in shown if (n, m) == (ours, "CostUsd") and o["stat"] == "Sum"}
    assert {3600, 86400} <= cost_periods, "cost per hour and per day"
    # Per model: a search over the [Model] dimension.
    assert re.search(r'SEARCH\(\'\{\\"BedrockJobs/\$\{AWS::StackName\}\\",Model\}', text)
    # The queues and the functions.
    for queue in ("JobsQueue", "DeadLetterQueue"):
        for metric in ("ApproximateNumberOfMessagesVisible", "ApproximateAgeOfOldestMessage"):
            assert f'["AWS/SQS", "{metric}", "QueueName", "${{{queue}.QueueName}}"' in text, (queue, metric)
    for function in FUNCTIONS:
        for metric in ("Errors", "Throttles", "Duration"):
            assert f'["AWS/Lambda", "{metric}", "FunctionName", "${{{function}}}"' in text, (function, metric)
    # And the alarms' states.
    (alarm_widget,) = [w for w in body["widgets"] if w["type"] == "alarm"]
    alarms = set(of_type(resources, "AWS::CloudWatch::Alarm"))
    assert set(re.findall(r"\$\{(\w+)\.Arn\}", text)) == alarms
    assert len(alarm_widget["properties"]["alarms"]) == len(alarms)
    assert "JobsDashboard" in refs(source["Outputs"]["DashboardUrl"]["Value"])


def test_every_parameter_is_in_exactly_one_console_group(source):
    groups = source["Metadata"]["AWS::CloudFormation::Interface"]["ParameterGroups"]
    grouped = [name for group in groups for name in group["Parameters"]]
    assert sorted(grouped) == sorted(source["Parameters"])


def test_live_output_is_pushed_by_an_event_api_only_the_worker_publishes_to(resources):
    api = resources["LiveApi"]["Properties"]["EventConfig"]
    assert api["DefaultPublishAuthModes"] == [{"AuthType": "AWS_IAM"}]
    assert api["DefaultSubscribeAuthModes"] == [{"AuthType": "AMAZON_COGNITO_USER_POOLS"}]
    cognito = [p for p in api["AuthProviders"] if p["AuthType"] == "AMAZON_COGNITO_USER_POOLS"]
    assert cognito[0]["CognitoConfig"]["UserPoolId"] == {"Ref": "UserPool"}
    namespace = resources["JobsChannelNamespace"]["Properties"]
    assert namespace["Name"] == "jobs"
    assert namespace["PublishAuthModes"] == [{"AuthType": "AWS_IAM"}]
    assert namespace["SubscribeAuthModes"] == [{"AuthType": "AMAZON_COGNITO_USER_POOLS"}]
    # The subscribe handler lets in only the owner named by the channel's second segment,
    # and marks only the subscriber's own unfinished job watched (for WATCH_FOR, 15 minutes).
    code = namespace["CodeHandlers"]
    assert "owner !== ctx.identity.sub" in code and "util.unauthorized()" in code
    assert "claims.token_use !== 'access'" in code
    assert cognito[0]["CognitoConfig"]["AppIdClientRegex"] == {"Fn::Sub": "^${UserPoolClient}$"}
    assert "owner: { eq: owner }" in code and "unfinished: { attributeExists: true }" in code
    assert "900000" in code
    assert namespace["HandlerConfigs"]["OnSubscribe"]["Integration"]["DataSourceName"] == {
        "Fn::GetAtt": ["LiveJobsDataSource", "Name"]}
    marker = next(statements(resources["LiveDataSourceRole"]))
    assert marker["Condition"]["ForAllValues:StringEquals"]["dynamodb:Attributes"] == [
        "job_id", "watched_until", "owner", "unfinished"]
    # Only the worker may publish, and to the jobs namespace only.
    publishers = {name for name, role in of_type(resources, "AWS::IAM::Role").items()
                  for action, _ in grants(name, role) if action.startswith("appsync:")}
    assert publishers == {"WorkerRole"}
    env = resources["WorkerFunction"]["Properties"]["Environment"]["Variables"]
    assert env["EVENTS_HTTP_URL"] == {"Fn::Sub": "https://${LiveApi.Dns.Http}/event"}
