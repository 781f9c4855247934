"""Properties of template.yaml that deployment safety depends on.

The template is run through the SAM transform, as CloudFormation would, and the generated
resources are checked: least-privilege roles, private TLS-only buckets, the queue and its event
source, the authorizer on every route, the table's TTL and index, and the sample events.
A regression in any of them fails a test here.
"""

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


FUNCTIONS = {
    "GenerateFunction": ("api", "GenerateRole"),
    "JobStatusFunction": ("status", "StatusRole"),
    "WorkerFunction": ("worker", "WorkerRole"),
}

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
        ("dynamodb:Query", "JobsTable"),
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
        ("s3:PutObject", "ArtifactsBucket"),
        ("s3:DeleteObject", "ArtifactsBucket"),
        ("bedrock:InvokeModel", "AllowedModelIds"),
    },
}

# X-Ray's actions have no resource-level permissions: "*" is the narrowest there is.
UNSCOPABLE = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}


def statements(role):
    for policy in role["Properties"].get("Policies", []):
        yield from policy["PolicyDocument"]["Statement"]


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
        log_group = resources[props["LoggingConfig"]["LogGroup"]["Ref"]]
        assert log_group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    assert source["Parameters"]["Architecture"]["Default"] == "arm64"
    assert set(source["Parameters"]["Architecture"]["AllowedValues"]) == {"arm64", "x86_64"}


def test_each_role_grants_exactly_what_its_function_uses(resources):
    roles = of_type(resources, "AWS::IAM::Role")
    assert set(roles) == set(EXPECTED_PERMISSIONS), "no role is generated behind our back"
    for name, role in roles.items():
        props = role["Properties"]
        assert "ManagedPolicyArns" not in props, f"{name}: managed policies are too broad"
        granted = set()
        for statement in statements(role):
            assert statement["Effect"] == "Allow"
            actions = as_list(statement["Action"])
            for action in actions:
                assert "*" not in action, f"{name}: wildcard action {action}"
            if statement["Resource"] == "*":
                assert set(actions) <= UNSCOPABLE, f"{name}: Resource * for {actions}"
                continue
            targets = refs(statement["Resource"]) - {"AWS::Partition", "AWS::Region", "AWS::AccountId"}
            assert len(targets) == 1, f"{name}: {statement['Resource']}"
            granted |= {(action, target) for action in actions for target in targets}
        assert granted == EXPECTED_PERMISSIONS[name], name


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


def test_roles_trust_only_lambda_in_this_account(resources):
    for name, role in of_type(resources, "AWS::IAM::Role").items():
        (trust,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        assert trust["Principal"] == {"Service": "lambda.amazonaws.com"}, name
        assert trust["Condition"]["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}


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
    assert any(
        a["Properties"]["MetricName"] == "ApproximateNumberOfMessagesVisible"
        and "DeadLetterQueue" in refs(a["Properties"]["Dimensions"])
        for a in alarms
    )


def test_the_worker_reports_partial_batch_failures_with_bounded_concurrency(resources):
    (mapping,) = of_type(resources, "AWS::Lambda::EventSourceMapping").values()
    props = mapping["Properties"]
    assert props["FunctionName"] == {"Ref": "WorkerFunction"}
    assert props["EventSourceArn"] == {"Fn::GetAtt": ["JobsQueue", "Arn"]}
    assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert props["BatchSize"] == {"Ref": "WorkerBatchSize"}
    assert props["MaximumBatchingWindowInSeconds"] == {"Ref": "WorkerBatchingWindowSeconds"}
    assert props["ScalingConfig"] == {"MaximumConcurrency": {"Ref": "WorkerMaximumConcurrency"}}


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


def test_cors_allows_only_the_web_origin_and_the_stage_is_throttled_and_logged(resources):
    cors = resources["JobsApi"]["Properties"]["Body"]["x-amazon-apigateway-cors"]
    assert cors["allowOrigins"] == [{"Fn::Sub": "https://${WebDistribution.DomainName}"}]
    assert {"authorization", "idempotency-key"} <= set(cors["allowHeaders"])
    assert "location" in cors["exposeHeaders"]
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


def test_the_table_has_ttl_the_owner_index_recovery_and_encryption(resources):
    props = resources["JobsTable"]["Properties"]
    assert props["KeySchema"] == [{"AttributeName": "job_id", "KeyType": "HASH"}]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    (index,) = props["GlobalSecondaryIndexes"]
    assert index["IndexName"] == "owner-created_at-index"
    assert index["KeySchema"] == [
        {"AttributeName": "owner", "KeyType": "HASH"},
        {"AttributeName": "created_at", "KeyType": "RANGE"},
    ]
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
        "JOBS_TABLE", "JOBS_QUEUE_URL", "MODEL_ID", "ALLOWED_MODEL_IDS", "MAX_PROMPT_CHARS",
        "MAX_OUTPUT_TOKENS", "JOB_TTL_DAYS", "ALLOWED_ORIGIN", "COGNITO_REVOCATION_CHECK",
        "MAX_JOBS_PER_MINUTE"}
    assert env["JobStatusFunction"] == {
        "JOBS_TABLE", "ARTIFACTS_BUCKET", "ALLOWED_ORIGIN", "COGNITO_REVOCATION_CHECK"}
    assert env["WorkerFunction"] == {"JOBS_TABLE", "ARTIFACTS_BUCKET", "JOBS_QUEUE_URL", "MAX_ATTEMPTS"}
    # The revocation check covers every route, reads included.
    for name in ("GenerateFunction", "JobStatusFunction"):
        variables = resources[name]["Properties"]["Environment"]["Variables"]
        assert variables["COGNITO_REVOCATION_CHECK"] == {"Ref": "CognitoRevocationCheck"}


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
    batch = json.loads((ROOT / "events" / "worker-batch.json").read_text())
    assert {r["eventSource"] for r in batch["Records"]} == {"aws:sqs"}
    (mapping,) = of_type(resources, "AWS::Lambda::EventSourceMapping").values()
    assert mapping["Properties"]["FunctionName"] == {"Ref": "WorkerFunction"}


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
