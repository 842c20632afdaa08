"""Fast tier: real properties of the synthesized template (validation and bundling off)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import Token
from aws_cdk.assertions import Capture, Match

from udop.aws import settings as aws_settings
from udop.aws.definitions import canonical_definition, version_key
from udop.aws.settings import load_settings
from udop.compiler import CompileOptions, compile_pipeline
from udop.settings import required_variables
from udop.spec.loader import load_pipeline
from udop.spec.models import Schedule
from udop_infra import layers as layer_build
from udop_infra.config import ContextError
from udop_infra.orchestration import definition_version, schedule_expression, schedule_name

pytestmark = pytest.mark.infra
REPO = Path(__file__).resolve().parents[2]


def logical_id(stack: Any, construct: Any) -> str:
    return str(stack.get_logical_id(construct.node.default_child))


@pytest.fixture
def synth(synth_app: Any) -> Any:
    return synth_app


def of_type(resources: dict[str, Any], kind: str) -> dict[str, Any]:
    return {k: v for k, v in resources.items() if v["Type"] == kind}


def statements(resources: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for lid, res in resources.items():
        if res["Type"] in {"AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"}:
            out += [(lid, s) for s in res["Properties"]["PolicyDocument"]["Statement"]]
        elif res["Type"] == "AWS::IAM::Role":
            for policy in res["Properties"].get("Policies", []):
                out += [(lid, s) for s in policy["PolicyDocument"]["Statement"]]
    return out


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# --- storage --------------------------------------------------------------------------------------


def test_every_bucket_is_encrypted_private_and_tls_only(resources: dict[str, Any]) -> None:
    buckets = of_type(resources, "AWS::S3::Bucket")
    assert len(buckets) >= 3  # definitions, data, access logs
    for lid, bucket in buckets.items():
        props = bucket["Properties"]
        sse = props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0][
            "ServerSideEncryptionByDefault"
        ]
        assert sse["SSEAlgorithm"] in {"AES256", "aws:kms"}, lid
        assert props["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        }, lid
    tls_denied = set()
    for policy in of_type(resources, "AWS::S3::BucketPolicy").values():
        for st in policy["Properties"]["PolicyDocument"]["Statement"]:
            if (
                st["Effect"] == "Deny"
                and st.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"
                and st["Principal"] == {"AWS": "*"}
            ):
                tls_denied.add(policy["Properties"]["Bucket"]["Ref"])
    assert tls_denied == set(buckets)


def test_definitions_are_versioned_and_run_data_expires(stack: Any, resources: dict[str, Any]) -> None:
    definitions = resources[logical_id(stack, stack.storage.definitions)]["Properties"]
    data = resources[logical_id(stack, stack.storage.data)]["Properties"]
    assert definitions["VersioningConfiguration"] == {"Status": "Enabled"}
    rules = {r["Id"]: r for r in data["LifecycleConfiguration"]["Rules"]}
    assert rules["expire-run-data"]["Prefix"] == "runs/"
    assert rules["expire-run-data"]["ExpirationInDays"] == 30  # cdk.json udop:runDataExpirationDays
    assert rules["expire-run-data"]["Status"] == "Enabled"


def test_run_data_expiry_follows_context_and_can_be_off(synth: Any, tmp_path: Path) -> None:
    stack, template = synth(
        tmp_path / "a", **{"udop:runDataExpirationDays": 0, "udop:pipelinesDir": str(tmp_path)}
    )
    data = template.to_json()["Resources"][logical_id(stack, stack.storage.data)]["Properties"]
    assert [r["Id"] for r in data["LifecycleConfiguration"]["Rules"]] == ["abort-incomplete-uploads"]


# --- functions ------------------------------------------------------------------------------------


def test_functions_run_python312_traced_in_private_subnets(stack: Any, resources: dict[str, Any]) -> None:
    private = {logical_id(stack, s) for s in stack.network.vpc.isolated_subnets}
    for name, function in stack.runtime.functions.items():
        props = resources[logical_id(stack, function)]["Properties"]
        assert props["Runtime"] == "python3.12", name
        assert props["Handler"] == "app.handler", name
        assert props["TracingConfig"] == {"Mode": "Active"}, name
        assert {s["Ref"] for s in props["VpcConfig"]["SubnetIds"]} == private, name
        assert props["LoggingConfig"]["LogGroup"]["Ref"].startswith("Runtime"), name
        assert props["Environment"]["Variables"]["POWERTOOLS_METRICS_NAMESPACE"] == "udop"
    for name, layer in stack.runtime.layers.items():
        props = resources[logical_id(stack, layer)]["Properties"]
        assert props["CompatibleRuntimes"] == ["python3.12"], name
        assert props["CompatibleArchitectures"] == ["x86_64"], name


def test_each_function_carries_only_its_layers(stack: Any, resources: dict[str, Any]) -> None:
    layer_ids = {name: logical_id(stack, layer) for name, layer in stack.runtime.layers.items()}
    expected = {
        "task_runner": ["core", "connectors", "transforms"],
        "deployer": ["core"],
        "run_events": ["core", "openlineage"],  # it sends the OpenLineage events on AWS
    }
    for name, function in stack.runtime.functions.items():
        layers = resources[logical_id(stack, function)]["Properties"]["Layers"]
        assert sorted(layer["Ref"] for layer in layers) == sorted(layer_ids[n] for n in expected[name]), name


def test_task_runner_limits_and_settings(stack: Any, resources: dict[str, Any]) -> None:
    props = resources[logical_id(stack, stack.runtime.task_runner)]["Properties"]
    assert props["Timeout"] == 900
    assert props["MemorySize"] == 2048
    env = props["Environment"]["Variables"]
    # what udop.aws.settings.RunnerSettings requires at cold start
    for name in ("UDOP_DATA_BUCKET", "UDOP_DEFINITIONS_BUCKET", "UDOP_STATE_URL"):
        assert name in env
    assert env["UDOP_DATA_BUCKET"] == {"Ref": logical_id(stack, stack.storage.data)}
    deployer_env = resources[logical_id(stack, stack.runtime.deployer)]["Properties"]["Environment"][
        "Variables"
    ]
    for name in (
        "UDOP_DEFINITIONS_BUCKET",
        "UDOP_TASK_RUNNER_ARN",
        "UDOP_STATE_MACHINE_ROLE_ARN",
        "UDOP_DATABASE_URL",
    ):
        assert name in deployer_env


def test_environment_holds_no_secret_values(resources: dict[str, Any]) -> None:
    text = json.dumps({k: v for k, v in resources.items() if v["Type"] == "AWS::Lambda::Function"})
    assert "resolve:secretsmanager" not in text
    assert "SecretString" not in text


# --- IAM ------------------------------------------------------------------------------------------

#: actions a policy cannot usefully scope to a named resource (AWS service authorization reference;
#: ENIs as noted): a "*" resource is only acceptable for these
UNSCOPABLE = {
    # a VPC function's ENIs: Describe* cannot be scoped, and Lambda names the interfaces at run time
    "ec2:CreateNetworkInterface",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DescribeSubnets",
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
    "xray:GetSamplingRules",
    "xray:GetSamplingTargets",
    "states:ListStateMachines",
    "logs:CreateLogDelivery",
    "logs:GetLogDelivery",
    "logs:UpdateLogDelivery",
    "logs:DeleteLogDelivery",
    "logs:ListLogDeliveries",
    "logs:PutResourcePolicy",
    "logs:DescribeResourcePolicies",
    "logs:DescribeLogGroups",
    "ec2:DescribeManagedPrefixLists",
    "ec2:DescribeSecurityGroups",
    "ec2:RevokeSecurityGroupIngress",
    "ec2:RevokeSecurityGroupEgress",
    "ec2:AuthorizeSecurityGroupIngress",
    "ec2:AuthorizeSecurityGroupEgress",
}


def test_no_star_resource_where_a_name_is_known(resources: dict[str, Any]) -> None:
    for lid, st in statements(resources):
        if st["Effect"] != "Allow" or "*" not in as_list(st["Resource"]):
            continue
        actions = set(as_list(st["Action"]))
        assert actions <= UNSCOPABLE, f"{lid}: {sorted(actions - UNSCOPABLE)} on '*'"
    for lid, st in statements(resources):
        for action in as_list(st.get("Action", [])):
            assert action != "*", lid
            assert not action.endswith(":*"), f"{lid}: {action}"


def test_functions_log_only_to_their_own_group_without_managed_policies(
    stack: Any, resources: dict[str, Any]
) -> None:
    for name, function in stack.runtime.functions.items():
        role = resources[logical_id(stack, function.role)]["Properties"]
        assert "ManagedPolicyArns" not in role, name
        log_group = logical_id(stack, function.node.scope.log_group)
        granted = [
            st
            for lid, st in statements(resources)
            if {"Ref": logical_id(stack, function.role)} in resources[lid]["Properties"].get("Roles", [])
            and "logs:PutLogEvents" in as_list(st["Action"])
        ]
        assert [st["Resource"] for st in granted] == [{"Fn::GetAtt": [log_group, "Arn"]}], name


def test_task_runner_role_touches_only_its_buckets_and_secret(stack: Any, resources: dict[str, Any]) -> None:
    role = logical_id(stack, stack.runtime.task_runner.role)
    granted: dict[str, list[Any]] = {}
    for lid, st in statements(resources):
        policy = resources[lid]["Properties"]
        if lid.startswith("RuntimeTaskRunner") and {"Ref": role} in policy.get("Roles", []):
            for action in as_list(st["Action"]):
                granted.setdefault(action, []).extend(as_list(st["Resource"]))
    data, definitions = logical_id(stack, stack.storage.data), logical_id(stack, stack.storage.definitions)
    assert set(granted) >= {"s3:GetObject", "s3:PutObject", "s3:ListBucket", "secretsmanager:GetSecretValue"}
    text = json.dumps(granted["s3:PutObject"])
    assert data in text
    assert definitions not in text  # never writes definitions
    assert granted["s3:ListBucket"] == [{"Fn::GetAtt": [data, "Arn"]}]
    assert granted["secretsmanager:GetSecretValue"] == [{"Ref": logical_id(stack, stack.data.cache_secret)}]
    assert not any(a.startswith(("states:", "iam:", "rds:", "elasticache:")) for a in granted)


def test_state_machine_permissions_are_scoped_to_udop_machines(resources: dict[str, Any]) -> None:
    seen = 0
    for lid, st in statements(resources):
        if not any(
            a.startswith("states:") and a != "states:ListStateMachines" for a in as_list(st["Action"])
        ):
            continue
        for resource in as_list(st["Resource"]):
            text = json.dumps(resource)
            seen += 1
            assert ":stateMachine:udop-" in text or ":execution:udop-" in text or "Ref" in text, (lid, text)
    assert seen


def test_run_events_reads_task_results_and_execution_history_only(
    stack: Any, resources: dict[str, Any]
) -> None:
    role = logical_id(stack, stack.runtime.run_events.role)
    granted: dict[str, list[Any]] = {}
    for lid, st in statements(resources):
        if {"Ref": role} in resources[lid]["Properties"].get("Roles", []):
            for action in as_list(st["Action"]):
                granted.setdefault(action, []).extend(as_list(st["Resource"]))
    data = logical_id(stack, stack.storage.data)
    assert granted["s3:GetObject"] == [{"Fn::Join": ["", [{"Fn::GetAtt": [data, "Arn"]}, "/results/*"]]}]
    assert not any(a.startswith("s3:") and a != "s3:GetObject" for a in granted)
    history = json.dumps(granted["states:GetExecutionHistory"])
    assert ":execution:udop-*" in history


def test_deployer_may_pass_only_the_state_machine_role_to_step_functions(
    stack: Any, resources: dict[str, Any]
) -> None:
    passes = [st for _, st in statements(resources) if "iam:PassRole" in as_list(st["Action"])]
    role = logical_id(stack, stack.runtime.deployed_state_machine_role)
    only_this_role = {
        "Action": "iam:PassRole",
        "Effect": "Allow",
        "Condition": {"StringEquals": {"iam:PassedToService": "states.amazonaws.com"}},
        "Resource": {"Fn::GetAtt": [role, "Arn"]},
    }
    # the deployer's and the REST API's (which deploys on POST /pipelines); besides, each may pass the
    # schedules' role to EventBridge Scheduler only (tests/infra/test_schedules_infra.py)
    scheduler = logical_id(stack, stack.schedules.role)
    to_scheduler = {
        "Action": "iam:PassRole",
        "Effect": "Allow",
        "Condition": {"StringEquals": {"iam:PassedToService": "scheduler.amazonaws.com"}},
        "Resource": {"Fn::GetAtt": [scheduler, "Arn"]},
    }
    assert sorted(passes, key=str) == sorted([only_this_role, only_this_role, to_scheduler, to_scheduler],
                                             key=str)


# --- data services --------------------------------------------------------------------------------


def test_database_encrypted_private_backed_up_with_secret_and_proxy(
    stack: Any, template: Any, resources: dict[str, Any]
) -> None:
    db = resources[logical_id(stack, stack.data.database)]["Properties"]
    assert db["StorageEncrypted"] is True
    assert db["PubliclyAccessible"] is False
    assert db["DeletionProtection"] is True
    assert db["BackupRetentionPeriod"] == 7
    assert db["Engine"] == "postgres"
    password = db["MasterUserPassword"]["Fn::Join"][1]
    assert password[0] == "{{resolve:secretsmanager:"
    assert password[2] == ":SecretString:password::}}"
    assert resources[password[1]["Ref"]]["Type"] == "AWS::SecretsManager::Secret"
    subnet_group = resources[db["DBSubnetGroupName"]["Ref"]]["Properties"]
    private = {logical_id(stack, s) for s in stack.network.vpc.isolated_subnets}
    assert {s["Ref"] for s in subnet_group["SubnetIds"]} == private
    template.has_resource_properties(
        "AWS::RDS::DBProxy",
        {
            "EngineFamily": "POSTGRESQL",
            "RequireTLS": True,
            "Auth": [
                Match.object_like(
                    {"AuthScheme": "SECRETS", "SecretArn": {"Ref": Match.string_like_regexp("Secret")}}
                )
            ],
            "VpcSubnetIds": Match.array_with([{"Ref": sorted(private)[0]}]),
        },
    )
    template.has_resource_properties(
        "AWS::SecretsManager::Secret",
        {
            "GenerateSecretString": Match.object_like(
                {"SecretStringTemplate": json.dumps({"username": "udop"}, separators=(",", ":"))}
            )
        },
    )


def test_redis_tls_auth_and_encryption_at_rest(stack: Any, template: Any) -> None:
    token = Capture()
    template.has_resource_properties(
        "AWS::ElastiCache::ReplicationGroup",
        {
            "Engine": "redis",
            "TransitEncryptionEnabled": True,
            "AtRestEncryptionEnabled": True,
            "AuthToken": token,
        },
    )
    ref = json.dumps(token.as_object())
    assert "{{resolve:secretsmanager:" in ref
    assert logical_id(stack, stack.data.cache_secret) in ref


def test_only_functions_reach_the_proxy_and_cache(stack: Any, resources: dict[str, Any]) -> None:
    functions_sg = logical_id(stack, stack.network.functions_sg)
    for sg in (stack.data.proxy_sg, stack.data.cache_sg):
        ingress = resources[logical_id(stack, sg)]["Properties"].get("SecurityGroupIngress", [])
        ingress += [
            r["Properties"]
            for r in of_type(resources, "AWS::EC2::SecurityGroupIngress").values()
            if r["Properties"]["GroupId"] == {"Fn::GetAtt": [logical_id(stack, sg), "GroupId"]}
        ]
        assert ingress
        assert all(rule["SourceSecurityGroupId"]["Fn::GetAtt"][0] == functions_sg for rule in ingress)


# --- network --------------------------------------------------------------------------------------


def test_vpc_endpoints_replace_a_nat_gateway(resources: dict[str, Any]) -> None:
    assert not of_type(resources, "AWS::EC2::NatGateway")  # cdk.json: udop:natGateways 0
    services = set()
    for endpoint in of_type(resources, "AWS::EC2::VPCEndpoint").values():
        name = json.dumps(endpoint["Properties"]["ServiceName"])
        services.add(
            (
                re.search(r"\.(s3|states|secretsmanager|logs|monitoring|cognito-idp|scheduler)\"", name).group(1),
                endpoint["Properties"].get("VpcEndpointType", "Gateway"),
            )
        )
    assert services == {
        ("s3", "Gateway"),
        ("states", "Interface"),
        ("secretsmanager", "Interface"),
        ("logs", "Interface"),
        ("monitoring", "Interface"),
        ("cognito-idp", "Interface"),  # the API function fetches the user pool's keys (JWKS)
        ("scheduler", "Interface"),  # the deployer and the API manage the pipelines' schedules
    }


def test_nat_is_optional_by_context(synth: Any, tmp_path: Path) -> None:
    _, template = synth(tmp_path / "a", **{"udop:natGateways": 1, "udop:pipelinesDir": str(tmp_path)})
    template.resource_count_is("AWS::EC2::NatGateway", 1)


# --- triggers -------------------------------------------------------------------------------------


def test_pipeline_uploads_notify_the_deployer(stack: Any, template: Any) -> None:
    configs = Capture()
    template.has_resource_properties(
        "Custom::S3BucketNotifications",
        {
            "BucketName": {"Ref": logical_id(stack, stack.storage.definitions)},
            "NotificationConfiguration": {"LambdaFunctionConfigurations": configs},
        },
    )
    deployer = logical_id(stack, stack.runtime.deployer)
    got = {
        (
            c["Events"][0],
            tuple((r["Name"], r["Value"]) for r in c["Filter"]["Key"]["FilterRules"]),
            c["LambdaFunctionArn"]["Fn::GetAtt"][0],
        )
        for c in configs.as_array()
    }
    assert got == {
        ("s3:ObjectCreated:*", (("suffix", s), ("prefix", "pipelines/")), deployer)
        for s in (".yaml", ".yml", ".json")
    }


def test_execution_status_changes_go_to_run_events(stack: Any, template: Any) -> None:
    pattern = Capture()
    template.has_resource_properties(
        "AWS::Events::Rule",
        {
            "EventPattern": pattern,
            "Targets": [
                Match.object_like(
                    {"Arn": {"Fn::GetAtt": [logical_id(stack, stack.runtime.run_events), "Arn"]}}
                )
            ],
        },
    )
    got = pattern.as_object()
    assert got["source"] == ["aws.states"]
    assert got["detail-type"] == ["Step Functions Execution Status Change"]
    prefix = json.dumps(got["detail"]["stateMachineArn"][0]["prefix"])
    assert prefix.endswith(':stateMachine:udop-"]]}')


# --- orchestration --------------------------------------------------------------------------------


def test_state_machine_definition_is_the_compiler_output(stack: Any, template: Any) -> None:
    pipeline = load_pipeline(REPO / "pipelines" / "daily-sales.yaml")
    version = definition_version(canonical_definition(pipeline))
    compiled = compile_pipeline(pipeline, options=CompileOptions(version=version))
    assert compiled.substitutions == ["TaskRunnerArn"]
    template.has_resource_properties(
        "AWS::StepFunctions::StateMachine",
        {
            "StateMachineName": "udop-daily-sales",
            "DefinitionString": compiled.to_json(),
            "DefinitionSubstitutions": {
                "TaskRunnerArn": {"Fn::GetAtt": [logical_id(stack, stack.runtime.task_runner), "Arn"]}
            },
            "StateMachineType": "STANDARD",
            "TracingConfiguration": {"Enabled": True},
            "LoggingConfiguration": Match.object_like({"Level": "ALL", "IncludeExecutionData": True}),
        },
    )


def test_task_runner_loads_the_version_the_machine_was_compiled_from(
    stack: Any, resources: dict[str, Any]
) -> None:
    pipeline = load_pipeline(REPO / "pipelines" / "daily-sales.yaml")
    machine = stack.orchestration.pipelines["daily-sales"]
    definition = json.loads(machine.compiled.to_json())
    payloads = [s["Parameters"]["Payload"] for s in _all_states(definition) if s.get("Type") == "Task"]
    assert payloads
    assert {p["version"] for p in payloads} == {machine.source.version}
    deployment = next(iter(of_type(resources, "Custom::CDKBucketDeployment").values()))["Properties"]
    assert deployment["Prune"] is False  # never deletes other versions or uploads
    assert deployment["DestinationBucketName"] == {"Ref": logical_id(stack, stack.storage.definitions)}
    # the deployed object is versions/<name>/<version>.json holding the canonical definition
    outdir = Path(stack.node.root.outdir)
    key = version_key("daily-sales", machine.source.version)
    files = list(outdir.glob(f"asset.*/{key}"))
    assert len(files) == 1
    assert json.loads(files[0].read_text()) == canonical_definition(pipeline)


def _all_states(definition: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for state in definition["States"].values():
        out.append(state)
        for branch in state.get("Branches", []):
            out += _all_states(branch)
        if "ItemProcessor" in state:
            out += _all_states(state["ItemProcessor"])
    return out


def test_state_machine_role_invokes_only_the_task_runner(stack: Any, resources: dict[str, Any]) -> None:
    machine = stack.orchestration.pipelines["daily-sales"].state_machine
    role = logical_id(stack, machine.role)
    runner = logical_id(stack, stack.runtime.task_runner)
    actions: dict[str, list[Any]] = {}
    for lid, st in statements(resources):
        if {"Ref": role} in resources[lid]["Properties"].get("Roles", []):
            for action in as_list(st["Action"]):
                actions.setdefault(action, []).extend(as_list(st["Resource"]))
    assert actions["lambda:InvokeFunction"] == [
        {"Fn::GetAtt": [runner, "Arn"]},
        {"Fn::Join": ["", [{"Fn::GetAtt": [runner, "Arn"]}, ":*"]]},
    ]
    assert not any(a.startswith(("s3:", "iam:", "secretsmanager:")) for a in actions)


def test_schedule_starts_the_pipeline_with_a_run_context(stack: Any, template: Any) -> None:
    target = Capture()
    template.has_resource_properties(
        "AWS::Scheduler::Schedule",
        {
            "Name": "udop-daily-sales",
            "ScheduleExpression": "cron(0 6 * * ? *)",
            "ScheduleExpressionTimezone": "UTC",
            "State": "ENABLED",
            "FlexibleTimeWindow": {"Mode": "OFF"},
            "Target": target,
        },
    )
    machine = logical_id(stack, stack.orchestration.pipelines["daily-sales"].state_machine)
    assert target.as_object()["Arn"] == {"Ref": machine}
    body = json.dumps(target.as_object()["Input"])
    for field in (
        "<aws.scheduler.execution-id>",
        "<aws.scheduler.scheduled-time>",
        '\\"min_amount\\": 0',
        '\\"data_prefix\\": \\"\\"',
    ):
        assert field in body


@pytest.mark.parametrize(
    ("cron", "expected"),
    [
        ("0 6 * * *", "cron(0 6 * * ? *)"),
        # cron numbers weekdays 0-6 from Sunday (7 is Sunday too); EventBridge 1-7 from Sunday
        ("30 2 * * 1-5", "cron(30 2 ? * 2-6 *)"),
        ("0 0 * * 0,6", "cron(0 0 ? * 1,7 *)"),
        ("0 0 * * 7", "cron(0 0 ? * 1 *)"),
        ("15 4 1 * *", "cron(15 4 1 * ? *)"),
        ("0 9 * * MON-FRI", "cron(0 9 ? * MON-FRI *)"),
    ],
)
def test_cron_to_eventbridge_scheduler(cron: str, expected: str) -> None:
    assert schedule_expression(Schedule(cron=cron)) == expected


@pytest.mark.parametrize(
    ("rate", "expected"),
    [("1 hours", "rate(1 hour)"), ("15 minute", "rate(15 minutes)"), ("2 days", "rate(2 days)")],
)
def test_rate_to_eventbridge_scheduler(rate: str, expected: str) -> None:
    assert schedule_expression(Schedule(rate=rate)) == expected


def test_schedule_names_fit_eventbridge_scheduler() -> None:
    assert schedule_name("daily-sales") == "udop-daily-sales"
    long_a, long_b = "a" * 62 + "x", "a" * 62 + "y"  # the longest pipeline names (63)
    assert len(schedule_name(long_a)) == 64
    assert schedule_name(long_a) != schedule_name(long_b)
    assert schedule_name(long_a).startswith("udop-aaaa")


def test_cron_restricting_both_day_fields_is_refused() -> None:
    # refused when the definition is loaded, before the CDK step (udop validate says so too)
    with pytest.raises(ValueError, match=r"day of the month .* and the day of the week"):
        schedule_expression(Schedule(cron="0 0 1 * 1"))


# --- observability --------------------------------------------------------------------------------


def test_alarms_on_failed_runs_task_runner_errors_and_throttles(stack: Any, template: Any) -> None:
    topic = {"Ref": logical_id(stack, stack.observability.topic)}
    runner = {"Ref": logical_id(stack, stack.runtime.task_runner)}
    machine = {"Ref": logical_id(stack, stack.orchestration.pipelines["daily-sales"].state_machine)}
    for namespace, metric, dimension in [
        ("AWS/Lambda", "Errors", {"Name": "FunctionName", "Value": runner}),
        ("AWS/Lambda", "Throttles", {"Name": "FunctionName", "Value": runner}),
        ("AWS/States", "ExecutionsFailed", {"Name": "StateMachineArn", "Value": machine}),
    ]:
        template.has_resource_properties(
            "AWS::CloudWatch::Alarm",
            {
                "Namespace": namespace,
                "MetricName": metric,
                "Dimensions": [dimension],
                "Threshold": 1,
                "ComparisonOperator": "GreaterThanOrEqualToThreshold",
                "AlarmActions": [topic],
            },
        )
    template.has_resource_properties("AWS::SNS::Topic", {"KmsMasterKeyId": Match.any_value()})
    body = Capture()
    template.has_resource_properties("AWS::CloudWatch::Dashboard", {"DashboardBody": body})
    assert "Throttles" in json.dumps(body.as_object())
    assert "ExecutionsFailed" in json.dumps(body.as_object())


# --- the app as a whole ---------------------------------------------------------------------------


def test_env_agnostic(stack: Any, resources: dict[str, Any]) -> None:
    assert Token.is_unresolved(stack.account)
    assert Token.is_unresolved(stack.region)
    assert not re.search(r"\b\d{12}\b", json.dumps(resources))  # no account id anywhere


def test_bad_context_is_one_line_naming_the_key(synth: Any, tmp_path: Path) -> None:
    with pytest.raises(ContextError, match=r"^context udop:logRetentionDays: 42 is not one of"):
        synth(tmp_path / "a", **{"udop:logRetentionDays": 42})
    with pytest.raises(ContextError, match=r"^context udop:natGateways: 'two' is not a whole number$"):
        synth(tmp_path / "b", **{"udop:natGateways": "two"})


def test_broken_pipeline_definition_stops_synth_naming_the_file(synth: Any, tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "apiVersion: udop/v1\nkind: Pipeline\nmetadata: {name: bad}\n"
        "spec:\n  tasks:\n    - {id: a, type: python, callable: 'm:f', depends_on: [nope]}\n"
    )
    with pytest.raises(ContextError, match=r"bad\.yaml.*nope"):
        synth(tmp_path / "out", **{"udop:pipelinesDir": str(tmp_path)})


def test_without_python312_a_synth_that_builds_layers_stops_with_one_line(
    synth: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_python312() -> str:
        raise layer_build.LayerBuildError("building the Lambda layers needs CPython 3.12 (...)")

    monkeypatch.setattr(layer_build, "find_python312", no_python312)
    with pytest.raises(ContextError, match=r"^layer 'core': building the Lambda layers needs CPython 3\.12"):
        synth(tmp_path / "out", **{"udop:assets": "build", "aws:cdk:bundling-stacks": ["**"]})


def test_a_layer_that_cannot_be_built_stops_the_synth_with_one_line(
    synth: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from udop_infra.platform import synth_error

    def no_index(layer: str, output_dir: Path) -> None:
        raise layer_build.LayerBuildError(f"installing {layer} failed (pip: ERROR: no index); check access")

    monkeypatch.setattr(layer_build, "stage_layer", no_index)
    with pytest.raises(RuntimeError) as caught:
        synth(tmp_path / "out", **{"udop:assets": "build", "aws:cdk:bundling-stacks": ["**"]})
    # raised inside CDK's bundling, wrapped by jsii: the apps print this line and exit 2
    assert synth_error(caught.value) == "layer 'core': installing core failed (pip: ERROR: no index); check access"
    assert synth_error(ValueError("a bug")) is None


def _layer_keys(template: Any, stack: Any) -> dict[str, str]:
    resources = template.to_json()["Resources"]
    return {name: resources[logical_id(stack, layer)]["Properties"]["Content"]["S3Key"]
            for name, layer in stack.runtime.layers.items()}


def test_built_layers_are_hashed_from_their_inputs_and_udops_version(
    synth: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # bundling skipped (as `cdk deploy OtherStack` does for this one): the hashes are the real ones,
    # computed from requirements, uv.lock's pins, udop's version and (core) udop's files
    stack, template = synth(tmp_path / "a", **{"udop:assets": "build"})
    keys = _layer_keys(template, stack)
    again = _layer_keys(*reversed(synth(tmp_path / "b", **{"udop:assets": "build"})))
    assert keys == again
    assert len(set(keys.values())) == len(keys)
    monkeypatch.setattr(layer_build, "udop_version", lambda: "99.0.0")
    upgraded = _layer_keys(*reversed(synth(tmp_path / "c", **{"udop:assets": "build"})))
    assert all(upgraded[name] != keys[name] for name in keys)  # an upgrade redeploys every layer


def test_the_layer_pins_are_uv_locks_for_the_lambda_runtime() -> None:
    import subprocess

    exported = subprocess.run(
        [str(REPO / ".tools" / "bin" / "uv"), "export", "--frozen", "--no-dev", "--all-extras", "--no-hashes",
         "--no-emit-project", "--no-header", "--no-annotate"],
        cwd=REPO, capture_output=True, text=True, check=True, timeout=60).stdout
    pins = dict(line.split("==") for line in layer_build.locked_constraints().splitlines())
    for line in exported.splitlines():
        if not line or line.startswith((" ", "#")):
            continue
        requirement, _, marker = line.partition(" ; ")
        name, version = requirement.split("==")
        if "win32" in marker or "emscripten" in marker or "PyPy" in marker or "< '3.12'" in marker:
            continue
        assert pins[layer_build.dist_name(name)] == version, name


@pytest.mark.parametrize(
    ("function", "settings_class"),
    [("task_runner", "RunnerSettings"), ("deployer", "DeployerSettings"), ("run_events", "EventsSettings")],
)
def test_each_function_gets_every_setting_it_validates_at_cold_start(
    stack: Any, resources: dict[str, Any], monkeypatch: pytest.MonkeyPatch, function: str, settings_class: str
) -> None:
    env = resources[logical_id(stack, stack.runtime.functions[function])]["Properties"]["Environment"]
    for name in [n for n in os.environ if n.startswith("UDOP_")]:
        monkeypatch.delenv(name)
    for name, value in env["Variables"].items():
        monkeypatch.setenv(name, value if isinstance(value, str) else "resolved-at-deploy")
    loaded = load_settings(getattr(aws_settings, settings_class))  # raises ConfigError naming a gap
    required = required_variables(type(loaded))
    assert required  # each function requires some (fields declared once, listed in its `requires`)
    for name in required:
        assert name in env["Variables"], name


def test_machines_the_deployer_creates_may_trace_and_log_like_the_cdk_ones(
    stack: Any, resources: dict[str, Any]
) -> None:
    # the deployer creates udop-<name> machines with X-Ray on and logging ALL to this log group
    role = logical_id(stack, stack.runtime.deployed_state_machine_role)
    role_actions = {
        a
        for lid, st in statements(resources)
        if {"Ref": role} in resources[lid]["Properties"].get("Roles", [])
        for a in as_list(st["Action"])
    }
    assert {"xray:PutTraceSegments", "xray:PutTelemetryRecords"} <= role_actions
    deployer = resources[logical_id(stack, stack.runtime.deployer)]["Properties"]
    log_group = deployer["Environment"]["Variables"]["UDOP_STATE_MACHINE_LOG_GROUP_ARN"]
    assert log_group == {"Fn::GetAtt": [logical_id(stack, stack.runtime.state_machine_logs), "Arn"]}
    deployer_role = deployer["Role"]["Fn::GetAtt"][0]
    deployer_actions = {
        a
        for lid, st in statements(resources)
        if {"Ref": deployer_role} in resources[lid]["Properties"].get("Roles", [])
        for a in as_list(st["Action"])
    }
    # CreateStateMachine/UpdateStateMachine with a loggingConfiguration need vended-log delivery
    assert {
        "logs:CreateLogDelivery",
        "logs:GetLogDelivery",
        "logs:UpdateLogDelivery",
        "logs:ListLogDeliveries",
        "logs:PutResourcePolicy",
        "logs:DescribeResourcePolicies",
        "logs:DescribeLogGroups",
    } <= deployer_actions


def test_outputs_give_udop_deploy_what_the_deployer_function_gets(stack: Any, template: Any) -> None:
    # `udop deploy FILE` from a laptop creates machines that run and log like the deployer's
    outputs = template.to_json()["Outputs"]
    deployer_env = template.to_json()["Resources"][logical_id(stack, stack.runtime.deployer)]["Properties"][
        "Environment"
    ]["Variables"]
    assert outputs["StateMachineRoleArn"]["Value"] == deployer_env["UDOP_STATE_MACHINE_ROLE_ARN"]
    assert outputs["StateMachineLogGroupArn"]["Value"] == deployer_env["UDOP_STATE_MACHINE_LOG_GROUP_ARN"]
