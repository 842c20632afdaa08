"""The REST API in the CDK app (udop_infra.api): real properties of the synthesized template.

Fast tier (validation and bundling off), except the last test, which starts the API function from
the built layers with python3.12 (slow; skipped when the layers are not built).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aws_cdk.assertions import Capture, Match

from udop.api.settings import load_api_settings
from udop.api.stepfunctions import _REQUIRED as LAUNCHER_REQUIRED
from udop_infra.config import ContextError

pytestmark = pytest.mark.infra
REPO = Path(__file__).resolve().parents[2]


def logical_id(stack: Any, construct: Any) -> str:
    return str(stack.get_logical_id(construct.node.default_child))


def of_type(resources: dict[str, Any], kind: str) -> dict[str, Any]:
    return {k: v for k, v in resources.items() if v["Type"] == kind}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def role_statements(resources: dict[str, Any], role_id: str) -> list[dict[str, Any]]:
    """Every statement of the policies attached to the role ``role_id``."""
    out = []
    for res in of_type(resources, "AWS::IAM::Policy").values():
        if {"Ref": role_id} in res["Properties"].get("Roles", []):
            out += res["Properties"]["PolicyDocument"]["Statement"]
    return out


def grants(resources: dict[str, Any], role_id: str) -> dict[str, list[Any]]:
    """action -> every resource it is allowed on."""
    granted: dict[str, list[Any]] = {}
    for st in role_statements(resources, role_id):
        assert st["Effect"] == "Allow"
        for action in as_list(st["Action"]):
            granted.setdefault(action, []).extend(as_list(st["Resource"]))
    return granted


def api_env(stack: Any, resources: dict[str, Any]) -> dict[str, Any]:
    return dict(resources[logical_id(stack, stack.api.function)]["Properties"]["Environment"]["Variables"])


@pytest.fixture(scope="module")
def custom(synth_app: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """The app with the API's context settings changed (and no pipelines, to keep it small)."""
    empty = tmp_path_factory.mktemp("no-pipelines")
    return synth_app(  # type: ignore[no-any-return]
        tmp_path_factory.mktemp("cdk-custom"),
        **{
            "udop:pipelinesDir": str(empty),
            "udop:apiStageName": "v1",
            "udop:apiThrottleRateLimit": 7,
            "udop:apiThrottleBurstLimit": 11,
            "udop:logRetentionDays": 90,
        },
    )


# --- API Gateway ----------------------------------------------------------------------------------


def test_stage_throttling_stage_name_and_root_path_follow_context(custom: tuple[Any, Any]) -> None:
    stack, template = custom
    template.has_resource_properties(
        "AWS::ApiGateway::Stage",
        {
            "StageName": "v1",
            "TracingEnabled": True,
            "MethodSettings": Match.array_with(
                [
                    Match.object_like(
                        {
                            "HttpMethod": "*",
                            "ResourcePath": "/*",
                            "ThrottlingRateLimit": 7,
                            "ThrottlingBurstLimit": 11,
                            "DataTraceEnabled": False,
                        }
                    )
                ]
            ),
        },
    )
    env = api_env(stack, template.to_json()["Resources"])
    assert env["UDOP_API_ROOT_PATH"] == "/v1"  # FastAPI's links include the stage


def test_default_throttling_is_documented_default(template: Any) -> None:
    from udop_infra.config import CONTEXT_KEYS

    rate, burst = CONTEXT_KEYS["udop:apiThrottleRateLimit"][0], CONTEXT_KEYS["udop:apiThrottleBurstLimit"][0]
    assert 0 < rate <= burst
    template.has_resource_properties(
        "AWS::ApiGateway::Stage",
        {
            "StageName": "prod",
            "MethodSettings": Match.array_with(
                [Match.object_like({"ThrottlingRateLimit": rate, "ThrottlingBurstLimit": burst})]
            ),
        },
    )


def test_access_logs_are_json_in_a_group_with_retention(custom: tuple[Any, Any]) -> None:
    stack, template = custom
    destination, log_format = Capture(), Capture()
    template.has_resource_properties(
        "AWS::ApiGateway::Stage",
        {"AccessLogSetting": {"DestinationArn": destination, "Format": log_format}},
    )
    group = logical_id(stack, stack.api.access_logs)
    assert destination.as_object() == {"Fn::GetAtt": [group, "Arn"]}
    fields = json.loads(log_format.as_string())  # one JSON object per request
    for key, variable in {
        "requestId": "$context.requestId",
        "ip": "$context.identity.sourceIp",
        "httpMethod": "$context.httpMethod",
        "status": "$context.status",
        "integrationLatency": "$context.integrationLatency",
        "xrayTraceId": "$context.xrayTraceId",
    }.items():
        assert fields[key] == variable, key
    resources = template.to_json()["Resources"]
    assert resources[group]["Type"] == "AWS::Logs::LogGroup"
    assert resources[group]["Properties"]["RetentionInDays"] == 90  # udop:logRetentionDays


def test_every_method_is_a_lambda_proxy_to_the_api_function_behind_the_validator(
    stack: Any, template: Any, resources: dict[str, Any]
) -> None:
    api_id = logical_id(stack, stack.api.rest_api)
    validator_id = logical_id(stack, stack.api.request_validator)
    assert resources[validator_id]["Properties"] == {
        "RestApiId": {"Ref": api_id},
        "Name": "udop-params-and-body",
        "ValidateRequestParameters": True,
        "ValidateRequestBody": True,
    }
    function_id = logical_id(stack, stack.api.function)
    methods = {k: v["Properties"] for k, v in of_type(resources, "AWS::ApiGateway::Method").items()}
    assert len(methods) == 2  # ANY on / and ANY on /{proxy+}: the app does the routing
    proxy_resources = of_type(resources, "AWS::ApiGateway::Resource")
    assert [r["Properties"]["PathPart"] for r in proxy_resources.values()] == ["{proxy+}"]
    for lid, method in methods.items():
        assert method["HttpMethod"] == "ANY", lid
        assert method["RestApiId"] == {"Ref": api_id}, lid
        assert method["RequestValidatorId"] == {"Ref": validator_id}, lid
        integration = method["Integration"]
        assert integration["Type"] == "AWS_PROXY", lid
        assert integration["IntegrationHttpMethod"] == "POST", lid
        assert {"Fn::GetAtt": [function_id, "Arn"]} in json.loads(json.dumps(integration["Uri"]))["Fn::Join"][
            1
        ], lid
    # API Gateway may invoke the function, only from this API
    permissions = [
        p["Properties"]
        for p in of_type(resources, "AWS::Lambda::Permission").values()
        if p["Properties"]["Principal"] == "apigateway.amazonaws.com"
    ]
    assert permissions
    for permission in permissions:
        assert permission["FunctionName"] == {"Fn::GetAtt": [function_id, "Arn"]}
        assert {"Ref": api_id} in permission["SourceArn"]["Fn::Join"][1]
    template.has_resource_properties(
        "AWS::ApiGateway::RestApi", {"EndpointConfiguration": {"Types": ["REGIONAL"]}}
    )


def test_the_stack_outputs_the_stage_url(stack: Any, template: Any) -> None:
    outputs = template.to_json()["Outputs"]
    assert outputs["ApiUrl"]["Value"]["Fn::Join"][1] == [
        "https://",
        {"Ref": logical_id(stack, stack.api.rest_api)},
        ".execute-api.",
        {"Ref": "AWS::Region"},
        ".",
        {"Ref": "AWS::URLSuffix"},
        "/",
        {"Ref": stack.get_logical_id(stack.api.rest_api.deployment_stage.node.default_child)},
        "/",
    ]
    # one URL output, not CDK's extra unnamed "Endpoint" one as well
    assert [k for k in outputs if "execute-api" in json.dumps(outputs[k])] == ["ApiUrl"]
    assert "ApiUserPoolId" in outputs and "ApiUserPoolClientId" in outputs


# --- the function ---------------------------------------------------------------------------------


def test_api_function_runs_python312_in_the_vpc_with_core_and_api_layers(
    stack: Any, resources: dict[str, Any]
) -> None:
    props = resources[logical_id(stack, stack.api.function)]["Properties"]
    assert props["Runtime"] == "python3.12"
    assert props["Handler"] == "app.handler"
    assert props["TracingConfig"] == {"Mode": "Active"}
    assert props["Timeout"] <= 29  # API Gateway gives up after 29 s
    private = {logical_id(stack, s) for s in stack.network.vpc.isolated_subnets}
    assert {s["Ref"] for s in props["VpcConfig"]["SubnetIds"]} == private
    # the functions' security group: the one the RDS Proxy admits
    assert props["VpcConfig"]["SecurityGroupIds"] == [
        {"Fn::GetAtt": [logical_id(stack, stack.network.functions_sg), "GroupId"]}
    ]
    layers = {name: logical_id(stack, layer) for name, layer in stack.runtime.layers.items()}
    assert sorted(layer["Ref"] for layer in props["Layers"]) == sorted([layers["core"], layers["api"]])


def test_api_environment_points_at_the_platform_like_the_other_functions(
    stack: Any, resources: dict[str, Any]
) -> None:
    env = api_env(stack, resources)
    deployer = resources[logical_id(stack, stack.runtime.deployer)]["Properties"]["Environment"]["Variables"]
    assert env["UDOP_EXECUTOR"] == "stepfunctions"
    for same in (
        "UDOP_DATABASE_URL",
        "UDOP_DATABASE_SECRET_ARN",
        "UDOP_DEFINITIONS_BUCKET",
        "UDOP_DATA_BUCKET",
        "UDOP_TASK_RUNNER_ARN",
        "UDOP_STATE_MACHINE_ROLE_ARN",
        # POST /pipelines deploys machines that log like the deployer's
        "UDOP_STATE_MACHINE_LOG_GROUP_ARN",
    ):
        assert env[same] == deployer[same], same
    assert env["UDOP_TASK_RUNNER_ARN"] == {
        "Fn::GetAtt": [logical_id(stack, stack.runtime.task_runner), "Arn"]
    }
    assert env["UDOP_STATE_MACHINE_ROLE_ARN"] == {
        "Fn::GetAtt": [logical_id(stack, stack.runtime.deployed_state_machine_role), "Arn"]
    }
    assert env["UDOP_API_ROOT_PATH"] == "/prod"
    # tokens from the stack's own Cognito user pool: ID tokens, aud = the app client
    pool = logical_id(stack, stack.api.user_pool)
    client = logical_id(stack, stack.api.user_pool_client)
    jwks, issuer = json.dumps(env["UDOP_JWKS_URL"]), json.dumps(env["UDOP_JWT_ISSUER"])
    assert f'{{"Ref": "{pool}"}}' in jwks and jwks.endswith('"/.well-known/jwks.json"]]}')
    assert f'{{"Ref": "{pool}"}}' in issuer and '"https://cognito-idp."' in issuer
    assert env["UDOP_JWT_AUDIENCE"] == {"Ref": client}
    assert not any(k in env for k in ("UDOP_JWT_SECRET", "UDOP_DATABASE_PASSWORD"))


def test_api_settings_load_from_the_function_environment_at_cold_start(
    stack: Any, resources: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = api_env(stack, resources)
    for name in [n for n in os.environ if n.startswith("UDOP_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value if isinstance(value, str) else f"resolved-at-deploy-{name}")
    settings = load_api_settings()  # a ConfigError would name the variable
    assert settings.executor == "stepfunctions"
    assert settings.api_root_path == "/prod"
    for field in LAUNCHER_REQUIRED:  # what StepFunctionsLauncher refuses to start without
        assert getattr(settings, field), field
    assert settings.jwks_url and settings.jwt_issuer and settings.jwt_audience


def test_user_pool_admin_created_users_mfa_and_one_group_per_role(stack: Any, template: Any) -> None:
    template.has_resource_properties(
        "AWS::Cognito::UserPool",
        {
            "AdminCreateUserConfig": {"AllowAdminCreateUserOnly": True},
            "MfaConfiguration": "ON",
            "Policies": {"PasswordPolicy": Match.object_like({"MinimumLength": 12, "RequireSymbols": True})},
        },
    )
    template.has_resource_properties(
        "AWS::Cognito::UserPoolClient", {"GenerateSecret": False, "PreventUserExistenceErrors": "ENABLED"}
    )
    groups = of_type(template.to_json()["Resources"], "AWS::Cognito::UserPoolGroup")
    assert sorted(g["Properties"]["GroupName"] for g in groups.values()) == ["admin", "operator", "viewer"]


def test_an_external_oidc_issuer_replaces_the_user_pool(synth_app: Any, tmp_path: Path) -> None:
    stack, template = synth_app(
        tmp_path / "out",
        **{
            "udop:pipelinesDir": str(tmp_path),
            "udop:jwksUrl": "https://login.example.com/.well-known/jwks.json",
            "udop:jwtIssuer": "https://login.example.com/",
            "udop:jwtAudience": "udop-api",
        },
    )
    template.resource_count_is("AWS::Cognito::UserPool", 0)
    resources = template.to_json()["Resources"]
    env = api_env(stack, resources)
    assert env["UDOP_JWKS_URL"] == "https://login.example.com/.well-known/jwks.json"
    assert env["UDOP_JWT_ISSUER"] == "https://login.example.com/"
    assert env["UDOP_JWT_AUDIENCE"] == "udop-api"
    endpoints = json.dumps(of_type(resources, "AWS::EC2::VPCEndpoint"))
    assert "cognito-idp" not in endpoints
    assert "ApiUserPoolId" not in template.to_json()["Outputs"]


def test_bad_api_context_is_one_line_naming_the_key(synth_app: Any, tmp_path: Path) -> None:
    with pytest.raises(ContextError, match=r"^context udop:apiStageName: 'my stage' must be"):
        synth_app(tmp_path / "a", **{"udop:apiStageName": "my stage"})
    with pytest.raises(
        ContextError, match=r"^context udop:apiThrottleBurstLimit: 0 must be a whole number >= 1$"
    ):
        synth_app(tmp_path / "b", **{"udop:apiThrottleBurstLimit": 0})
    with pytest.raises(ContextError, match=r"^context udop:jwtIssuer/udop:jwtAudience: set udop:jwksUrl too"):
        synth_app(tmp_path / "c", **{"udop:jwtAudience": "x"})
    with pytest.raises(
        ContextError, match=r"^context udop:jwksUrl: 'http://idp/jwks' must be an https:// URL$"
    ):
        synth_app(tmp_path / "d", **{"udop:jwksUrl": "http://idp/jwks"})


# --- IAM ------------------------------------------------------------------------------------------


def test_api_role_is_least_privilege(stack: Any, resources: dict[str, Any]) -> None:
    role = logical_id(stack, stack.api.function_construct.role)
    granted = grants(resources, role)
    # "*" only where AWS offers nothing narrower: ENIs of a VPC function, X-Ray, finding a machine by
    # name, the vended-log delivery of the machines' logging configuration
    star = {a for a, res in granted.items() if "*" in res}
    assert star == {
        "ec2:CreateNetworkInterface",
        "ec2:DescribeNetworkInterfaces",
        "ec2:DescribeSubnets",
        "ec2:DeleteNetworkInterface",
        "ec2:AssignPrivateIpAddresses",
        "ec2:UnassignPrivateIpAddresses",
        "xray:PutTraceSegments",
        "xray:PutTelemetryRecords",
        "states:ListStateMachines",
        "logs:CreateLogDelivery",
        "logs:GetLogDelivery",
        "logs:UpdateLogDelivery",
        "logs:DeleteLogDelivery",
        "logs:ListLogDeliveries",
        "logs:PutResourcePolicy",
        "logs:DescribeResourcePolicies",
        "logs:DescribeLogGroups",
    }
    assert all(granted[a] == ["*"] for a in star)
    machines, executions = (
        json.dumps(granted["states:StartExecution"]),
        json.dumps(granted["states:StopExecution"]),
    )
    assert ":stateMachine:udop-*" in machines
    for action in (
        "states:CreateStateMachine",
        "states:UpdateStateMachine",
        "states:DescribeStateMachine",
        "states:PublishStateMachineVersion",
        "states:ListStateMachineVersions",
        "states:StartExecution",
        "states:ListExecutions",
    ):
        text = json.dumps(granted[action])
        assert ":stateMachine:udop-*" in text and ":execution:" not in text, action
    for action in (
        "states:DescribeExecution",
        "states:StopExecution",
        "states:RedriveExecution",
        "states:GetExecutionHistory",
    ):
        assert json.dumps(granted[action]) == executions, action
    assert ":execution:udop-*" in executions
    # the only roles it may pass are the state machines' (to Step Functions) and the schedules' (to
    # EventBridge Scheduler)
    passes = [st for st in role_statements(resources, role) if "iam:PassRole" in as_list(st["Action"])]
    assert passes == [
        {
            "Action": "iam:PassRole",
            "Effect": "Allow",
            "Condition": {"StringEquals": {"iam:PassedToService": "states.amazonaws.com"}},
            "Resource": {"Fn::GetAtt": [logical_id(stack, stack.runtime.deployed_state_machine_role), "Arn"]},
        },
        {
            "Action": "iam:PassRole",
            "Effect": "Allow",
            "Condition": {"StringEquals": {"iam:PassedToService": "scheduler.amazonaws.com"}},
            "Resource": {"Fn::GetAtt": [logical_id(stack, stack.schedules.role), "Arn"]},
        },
    ]
    # S3: the definitions bucket (uploads, status reports, versions)
    definitions = logical_id(stack, stack.storage.definitions)
    objects = [
        {"Fn::Join": ["", [{"Fn::GetAtt": [definitions, "Arn"]}, "/pipelines/*"]]},
        {"Fn::Join": ["", [{"Fn::GetAtt": [definitions, "Arn"]}, "/versions/*"]]},
    ]
    assert granted["s3:GetObject"] == objects
    # ... and, in the data bucket, only a Step Functions backfill's dates files (udop.schedule.sfn_parent)
    backfill_dates = {"Fn::Join": ["", [{"Fn::GetAtt": [logical_id(stack, stack.storage.data), "Arn"]},
                                        "/runs/*/_backfills/*"]]}
    assert granted["s3:PutObject"] == [*objects, backfill_dates]
    assert granted["s3:ListBucket"] == [{"Fn::GetAtt": [definitions, "Arn"]}]
    # ... and of the data bucket its notification settings (an S3 trigger switches on its
    # EventBridge notifications, udop.schedule.s3events); of its objects only the backfill dates files
    data = logical_id(stack, stack.storage.data)
    assert granted["s3:GetBucketNotification"] == granted["s3:PutBucketNotification"] == [
        {"Fn::GetAtt": [data, "Arn"]}]
    assert sorted(a for a in granted if a.startswith("s3:")) == [
        "s3:GetBucketNotification",
        "s3:GetObject",
        "s3:ListBucket",
        "s3:PutBucketNotification",
        "s3:PutObject",
    ]
    # the database password, nothing else in Secrets Manager (not the cache's AUTH token)
    secret = logical_id(stack, stack.data.db_secret)
    secrets = {a: r for a, r in granted.items() if a.startswith("secretsmanager:")}
    assert "secretsmanager:GetSecretValue" in secrets
    assert all(r == [{"Ref": secret}] for r in secrets.values()), secrets
    assert not any(a.startswith(("lambda:", "dynamodb:", "kms:Decrypt")) for a in granted)


def test_api_function_reaches_the_database_proxy_and_the_users_keys(
    stack: Any, resources: dict[str, Any]
) -> None:
    functions_sg = {"Fn::GetAtt": [logical_id(stack, stack.network.functions_sg), "GroupId"]}
    proxy_sg = {"Fn::GetAtt": [logical_id(stack, stack.data.proxy_sg), "GroupId"]}
    ingress = [r["Properties"] for r in of_type(resources, "AWS::EC2::SecurityGroupIngress").values()]
    assert any(
        r["GroupId"] == proxy_sg and r["SourceSecurityGroupId"] == functions_sg and r["FromPort"] == 5432
        for r in ingress
    )
    # without NAT the pool's JWKS is reached through a Cognito interface endpoint
    endpoints = [
        e["Properties"]
        for e in of_type(resources, "AWS::EC2::VPCEndpoint").values()
        if "cognito-idp" in json.dumps(e["Properties"]["ServiceName"])
    ]
    assert len(endpoints) == 1
    assert endpoints[0]["PrivateDnsEnabled"] is True
    (endpoint_sg,) = endpoints[0]["SecurityGroupIds"]
    assert any(
        r["GroupId"] == endpoint_sg and r["SourceSecurityGroupId"] == functions_sg and r["FromPort"] == 443
        for r in ingress
    )


# --- the function from its layers ------------------------------------------------------------------

COLD_START = r"""
import json, sys, types
sys.path[:0] = [*LAYERS, FUNCTION]
import app  # cold start: settings, store, FastAPI app
event = {
    "resource": "/{proxy+}", "path": "/health", "httpMethod": "GET",
    "headers": {"Host": "abc.execute-api.eu-west-1.amazonaws.com"},
    "multiValueHeaders": {"Host": ["abc.execute-api.eu-west-1.amazonaws.com"]},
    "queryStringParameters": None, "multiValueQueryStringParameters": None,
    "pathParameters": {"proxy": "health"}, "stageVariables": None, "body": None,
    "isBase64Encoded": False,
    "requestContext": {"requestId": "r-1", "stage": "prod", "path": "/prod/health",
                       "httpMethod": "GET", "resourcePath": "/{proxy+}",
                       "identity": {"sourceIp": "10.0.0.1"}},
}
context = types.SimpleNamespace(function_name="udop-api", memory_limit_in_mb=1024,
    invoked_function_arn="arn:aws:lambda:eu-west-1:000000000000:function:udop-api",
    aws_request_id="r-1")
answer = app.handler(event, context)
print(json.dumps({"status": answer["statusCode"], "body": json.loads(answer["body"]),
                  "pyarrow": "pyarrow" in sys.modules}))
"""


@pytest.mark.slow
def test_api_function_starts_and_answers_from_its_layers_with_python312(tmp_path: Path) -> None:
    """The API function's code with only its layers (core + api) and the runtime's boto3."""
    spec = importlib.util.spec_from_file_location("layers_build", REPO / "layers" / "build.py")
    assert spec is not None
    assert spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    layers = [build.BUILD / name / "python" for name in build.FUNCTION_LAYERS["api"]]
    if not all(folder.is_dir() for folder in layers):
        pytest.skip("api layers not built: run `python layers/build.py`")
    python312 = build.find_python312()
    # boto3/botocore are the Lambda runtime's (pure Python): take the test environment's copies
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    for name in ("boto3", "botocore", "s3transfer"):
        module = __import__(name)
        (runtime / name).symlink_to(Path(module.__file__).parent)
    code = COLD_START.replace("LAYERS", repr([*map(str, layers), str(runtime)])).replace(
        "FUNCTION", repr(str(REPO / "functions" / "api"))
    )
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_EC2_METADATA_DISABLED": "true",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "UDOP_EXECUTOR": "stepfunctions",
        "UDOP_DATABASE_URL": f"sqlite:///{tmp_path / 'udop.db'}",
        "UDOP_DEFINITIONS_BUCKET": "definitions",
        "UDOP_DATA_BUCKET": "data",
        "UDOP_TASK_RUNNER_ARN": "arn:aws:lambda:eu-west-1:000000000000:function:runner",
        "UDOP_STATE_MACHINE_ROLE_ARN": "arn:aws:iam::000000000000:role/sm",
        "UDOP_JWKS_URL": "https://cognito-idp.eu-west-1.amazonaws.com/pool/.well-known/jwks.json",
        "UDOP_JWT_ISSUER": "https://cognito-idp.eu-west-1.amazonaws.com/pool",
        "UDOP_JWT_AUDIENCE": "client",
        "UDOP_API_ROOT_PATH": "/prod",
    }
    proc = subprocess.run(
        [python312, "-I", "-c", code],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    assert answer["status"] == 200, answer
    assert answer["pyarrow"] is False  # the API needs neither the connectors nor the transforms layer
