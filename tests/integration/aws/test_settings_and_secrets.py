"""Cold-start settings name the missing variable; passwords come from Secrets Manager into the URLs."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import pytest
from aws_support import in_process_only

from udop.aws.secrets import url_with_secret
from udop.aws.settings import RunnerSettings, load_settings
from udop.errors import ConfigError

pytestmark = [pytest.mark.aws]


def test_missing_settings_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("UDOP_DATA_BUCKET", "UDOP_DEFINITIONS_BUCKET", "UDOP_STATE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("UDOP_DEFINITIONS_BUCKET", "defs")
    with pytest.raises(ConfigError) as info:
        load_settings(RunnerSettings)
    message = str(info.value)
    assert "UDOP_DATA_BUCKET is missing" in message
    assert "UDOP_STATE_URL is missing" in message
    assert "UDOP_DEFINITIONS_BUCKET" not in message


@in_process_only  # the package is a stub: only the in-process emulation imports the real handler
def test_a_task_runner_without_its_settings_fails_at_cold_start_naming_the_variable(moto_aws: Any) -> None:
    lam = moto_aws.client("lambda")
    config = lam.get_function_configuration(FunctionName=moto_aws.task_runner_arn)
    variables = dict(config["Environment"]["Variables"])
    del variables["UDOP_STATE_URL"]
    lam.create_function(FunctionName=f"{moto_aws.prefix}-misconfigured",
                        Runtime="python3.12",
                        Role=moto_aws.role_arn, Handler="app.handler",
                        Code={"ZipFile": b"PK\x05\x06" + bytes(18)},
                        Environment={"Variables": variables})
    resp = lam.invoke(FunctionName=f"{moto_aws.prefix}-misconfigured", Payload=b"{}")
    body = json.loads(resp["Payload"].read())
    assert resp.get("FunctionError")
    assert body["errorType"] == "ConfigError"
    assert "UDOP_STATE_URL is missing" in body["errorMessage"]


def test_passwords_from_secrets_manager_go_into_the_urls(moto_aws: Any) -> None:
    sm = moto_aws.client("secretsmanager")
    rds = sm.create_secret(Name=f"{moto_aws.prefix}/db",
                           SecretString=json.dumps({"username": "udop", "password": "p@ss/w:rd"}))["ARN"]
    cache = sm.create_secret(Name=f"{moto_aws.prefix}/cache", SecretString="tok en")["ARN"]
    db_url = url_with_secret("postgresql+psycopg://udop@proxy.example:5432/udop?sslmode=require", rds, sm)
    parsed = urllib.parse.urlsplit(db_url)
    assert (parsed.username, urllib.parse.unquote(parsed.password or "")) == ("udop", "p@ss/w:rd")
    assert parsed.hostname == "proxy.example"
    assert parsed.query == "sslmode=require"
    redis_url = urllib.parse.urlsplit(url_with_secret("rediss://cache.example:6379/0", cache, sm))
    assert urllib.parse.unquote(redis_url.password or "") == "tok en"
    assert redis_url.port == 6379
    assert url_with_secret("redis://127.0.0.1:6379/0", None, sm) == "redis://127.0.0.1:6379/0"
    with pytest.raises(ConfigError, match="cannot read secret"):
        url_with_secret("redis://x", rds + "-missing", sm)
