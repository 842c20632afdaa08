"""Deployer Lambda: an upload of ``pipelines/<name>.yaml|.json`` to the definitions bucket becomes
the state machine ``udop-<name>``. The work is ``udop.aws.deployer.deploy_s3_object``."""

from __future__ import annotations

from typing import Any

import boto3

from udop.aws.deployer import deploy_s3_object, engine_substitutions
from udop.aws.observability import logger, metrics, tracer
from udop.aws.secrets import url_with_secret
from udop.aws.settings import DeployerSettings, load_settings
from udop.sandbox import server_policy
from udop.store import open_store

SETTINGS = load_settings(DeployerSettings)
S3 = boto3.client("s3")
SFN = boto3.client("stepfunctions")
STORE = open_store(url_with_secret(SETTINGS.database_url, SETTINGS.database_secret_arn))
#: uploads come from other people: refused unless they keep to the server's allowlists
POLICY = server_policy(data_root=None)


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    metrics.add_metric(name="DefinitionUploads", unit="Count", value=len(event.get("Records", [])))
    results = []
    for record in event.get("Records", []):
        result = deploy_s3_object(record["s3"]["bucket"]["name"], record["s3"]["object"]["key"], s3=S3,
                                  sfn=SFN, store=STORE, task_runner_arn=SETTINGS.task_runner_arn,
                                  role_arn=SETTINGS.state_machine_role_arn,
                                  log_group_arn=SETTINGS.state_machine_log_group_arn, policy=POLICY,
                                  engines=engine_substitutions(SETTINGS))
        if result is not None:
            results.append({"pipeline": result.pipeline, "ok": result.ok, "version": result.version,
                            "errors": [e["text"] for e in result.errors]})
    return {"deployed": results}
