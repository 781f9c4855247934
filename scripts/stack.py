"""Stack chores for the deploy scripts, through boto3 (which the SAM CLI already brings).

    python scripts/stack.py exists STACK         exit 0 if the stack exists
    python scripts/stack.py outputs STACK        print the outputs
    python scripts/stack.py publish-web STACK    upload web/ and its config.json, invalidate CloudFront
    python scripts/stack.py empty-buckets STACK  delete every object of the stack's buckets
"""

import json
import mimetypes
import pathlib
import sys
import time

import boto3
from botocore.exceptions import ClientError

ROOT = pathlib.Path(__file__).resolve().parents[1]


def outputs(stack):
    cloudformation = boto3.client("cloudformation")
    (description,) = cloudformation.describe_stacks(StackName=stack)["Stacks"]
    return {o["OutputKey"]: o["OutputValue"] for o in description.get("Outputs", [])}


def web_config(out, region):
    """The web UI's only configuration, the same shape the local gateway serves."""
    return {
        "apiUrl": out["ApiUrl"],
        "region": region,
        "cognitoEndpoint": f"https://cognito-idp.{region}.amazonaws.com/",
        "userPoolId": out["UserPoolId"],
        "userPoolClientId": out["UserPoolClientId"],
        "models": out["AllowedModelIds"].split(","),
        "defaultModel": out["ModelId"],
        "maxOutputTokens": int(out["MaxOutputTokens"]),
        "maxPromptChars": int(out["MaxPromptChars"]),
        "maxAttempts": int(out["MaxAttempts"]),
        "events": {"http": out["EventsHttpUrl"], "realtime": out["EventsRealtimeUrl"]},
    }


def publish_web(stack):
    out = outputs(stack)
    region = boto3.session.Session().region_name
    s3 = boto3.client("s3")
    bucket = out["WebBucketName"]
    web = ROOT / "web"
    files = [p for p in sorted(web.rglob("*")) if p.is_file() and p.name != "config.json"]
    if not files:
        print(f"  {web} holds no web UI to publish; the API is deployed all the same")
        return
    for path in files:
        key = path.relative_to(web).as_posix()
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        s3.upload_file(str(path), bucket, key, ExtraArgs={"ContentType": content_type})
        print(f"  uploaded {key}")
    s3.put_object(
        Bucket=bucket,
        Key="config.json",
        Body=json.dumps(web_config(out, region), indent=2).encode(),
        ContentType="application/json",
        CacheControl="no-cache",
    )
    print("  uploaded config.json")
    boto3.client("cloudfront").create_invalidation(
        DistributionId=out["WebDistributionId"],
        InvalidationBatch={"Paths": {"Quantity": 1, "Items": ["/*"]}, "CallerReference": str(time.time())},
    )
    print(f"  invalidated the CloudFront cache; the UI is at {out['WebUrl']}")


def empty_buckets(stack):
    out = outputs(stack)
    s3 = boto3.resource("s3")
    for name in (out["ArtifactsBucketName"], out["WebBucketName"]):
        deleted = s3.Bucket(name).objects.all().delete()
        count = sum(len(batch.get("Deleted", [])) for batch in deleted)
        print(f"  {name}: {count} objects deleted")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    command, stack = sys.argv[1:]
    try:
        if command == "exists":
            outputs(stack)
        elif command == "outputs":
            for key, value in sorted(outputs(stack).items()):
                print(f"  {key:20} {value}")
        elif command == "publish-web":
            publish_web(stack)
        elif command == "empty-buckets":
            empty_buckets(stack)
        else:
            sys.exit(__doc__)
    except ClientError as error:
        if command == "exists":
            sys.exit(1)
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
