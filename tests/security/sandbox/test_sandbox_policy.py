"""The policy and the redactor on their own: paths, allowlists, secret detection, masking, redaction;
and ``udop run`` (trusted) still reading any file and variable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from udop.errors import SpecError
from udop.sandbox import MASK, Policy, Redactor, SandboxViolation, looks_secret_name, server_policy
from udop.spec.models import Pipeline
from udop.spec.secure import check_definition, mask_definition


def _server(root: Path, **kw: object) -> Policy:
    return Policy(mode="server", roots=(str(root),), **kw)  # type: ignore[arg-type]


def test_paths_below_a_root_pass_and_every_escape_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.csv").write_text("a\n1\n")
    (root / "out").symlink_to("/etc")
    policy = _server(root)
    assert policy.confine(str(root / "sub" / "a.csv"), what="source.path") == str(root / "sub" / "a.csv")
    assert policy.confine(str(root / "sub" / "*.csv"), what="source.path")
    for bad in ("/etc/passwd", str(root / "sub" / ".." / ".." / "x.csv"), str(root / "out" / "passwd"),
                "/etc/*", "s3://other-bucket/x.csv"):
        with pytest.raises(SandboxViolation, match=r"source\.path"):
            policy.confine(bad, what="source.path")
    # a glob below a root matching a link out of it: the matched file is refused
    (root / "sub" / "link.csv").symlink_to("/etc/passwd")
    with pytest.raises(SandboxViolation, match="symbolic link"):
        policy.confine_files([str(root / "sub" / "link.csv")], what="source.path")


def test_trusted_policy_allows_everything(tmp_path: Path) -> None:
    policy = Policy.trusted()
    assert policy.confine("/etc/passwd", what="x") == "/etc/passwd"
    policy.check_env("HOME", what="x")
    policy.check_module("os", what="x")
    policy.check_secret_file("/etc/hostname", what="x")
    assert policy.environ() is os.environ


def test_env_files_and_modules_only_from_the_allowlists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = tmp_path / "code"
    (code / "pkg").mkdir(parents=True)
    (code / "tasks.py").write_text("def f(context, inputs):\n    return 1\n")
    (code / "pkg" / "__init__.py").write_text("")
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    monkeypatch.setenv("UDOP_ENV_ALLOWLIST", "REGION, STAGE")
    monkeypatch.setenv("UDOP_SECRETS_DIR", str(secrets))
    monkeypatch.setenv("REGION", "eu-west-1")
    monkeypatch.setenv("UDOP_JWT_SECRET", "x" * 40)
    policy = server_policy(data_root=str(tmp_path / "data"), code_dir=str(code))
    assert policy.environ() == {"REGION": "eu-west-1"}
    with pytest.raises(SandboxViolation, match="UDOP_JWT_SECRET"):
        policy.check_env("UDOP_JWT_SECRET", what="x")
    assert policy.allowed_modules() == ("pkg", "tasks")
    policy.check_module("tasks", what="x")
    policy.check_module("pkg.sub", what="x")
    for module in ("os", "builtins", "subprocess", "udop.api.keys"):
        with pytest.raises(SandboxViolation, match=repr(module)):
            policy.check_module(module, what="x")
    policy.check_secret_file("db-password", what="x")
    for bad in ("/etc/passwd", "../secrets2/x", str(tmp_path / "x")):
        with pytest.raises(SandboxViolation):
            policy.check_secret_file(bad, what="x")


def test_secret_names() -> None:
    for name in ("password", "UDOP_JWT_SECRET", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "PGPASSWORD",
                 "api_key", "apiKey", "Authorization", "private_key"):
        assert looks_secret_name(name), name
    for name in ("author", "keys", "key", "token_url", "secret_arn", "HOME", "path", "passthrough"):
        assert not looks_secret_name(name), name


def test_redactor_removes_registered_values_and_rule_matches() -> None:
    r = Redactor()
    r.add_secret("hunter2-long")
    r.add_pattern("email", r"[\w.]+@example\.com")
    text = "login hunter2-long failed for ann@example.com"
    assert r.redact(text) == f"login {MASK} failed for {MASK}"
    sample = [{"s": "hunter2-long", "n": 1}, {"s": b"xhunter2-long"}]
    assert r.redact_value(sample) == [{"s": MASK, "n": 1}, {"s": "x" + MASK}]
    r.add_secret("abc")  # too short to mask without damaging ordinary text
    assert r.redact("abc") == "abc"


def _pipeline(**spec: object) -> Pipeline:
    return Pipeline.model_validate({"apiVersion": "udop/v1", "kind": "Pipeline",
                                    "metadata": {"name": "p"}, "spec": spec})


INLINE = {
    "connections": {
        "wh": {"connector": "postgres", "host": "db", "user": "u", "password": "pw-inline-1"},
        "wh2": {"connector": "postgres", "url": "postgresql://u:pw-inline-2@db/x"},
        "api": {"connector": "http", "url": "https://api.example.com",
                "auth": {"type": "api_key", "name": "X-API-Key", "value": "pw-inline-3"}},
        "ok": {"connector": "postgres", "host": "db", "password": {"secret": "prod/db", "key": "password"}},
    },
    "tasks": [{"id": "t", "type": "python", "callable": "tasks:f"}],
}


def test_inline_secrets_are_refused_on_a_server_naming_each_field(tmp_path: Path) -> None:
    errors = check_definition(_pipeline(**INLINE), _server(tmp_path, python_modules=("tasks",)))
    where = sorted(str(e.path) for e in errors)
    assert where == ["spec.connections.api.auth.value", "spec.connections.wh.password",
                     "spec.connections.wh2.url"]
    for e in errors:
        assert "{secret: name-or-arn}" in str(e) and "\n" not in str(e)
        assert "pw-inline" not in str(e)
    assert check_definition(_pipeline(**INLINE), Policy.trusted()) == []


def test_mask_definition_keeps_references_and_masks_values() -> None:
    doc = _pipeline(**INLINE).model_dump(mode="json", by_alias=True)
    masked = mask_definition(doc)
    text = repr(masked)
    assert "pw-inline" not in text
    assert masked["spec"]["connections"]["wh2"]["url"] == f"postgresql://u:{MASK}@db/x"
    assert masked["spec"]["connections"]["ok"]["password"] == {"secret": "prod/db", "key": "password"}
    assert masked["spec"]["connections"]["api"]["url"] == "https://api.example.com"


def test_env_references_and_callables_are_checked_on_a_server(tmp_path: Path) -> None:
    pipeline = _pipeline(tasks=[
        {"id": "a", "type": "python", "callable": "builtins:print"},
        {"id": "b", "type": "python", "callable": "os:system"},
        {"id": "e", "type": "extract", "source": {"connector": "csv", "path": "/etc/passwd"}},
        {"id": "t", "type": "transform", "depends_on": ["e"], "steps": [{"derive": {"s": "${env.UDOP_JWT_SECRET}"}}]},
        {"id": "l", "type": "load", "depends_on": ["t"], "target": {"connector": "csv", "path": "/tmp/evil.csv"}},
    ])
    errors: list[SpecError] = check_definition(pipeline, _server(tmp_path))
    text = "\n".join(map(str, errors))
    assert "spec.tasks[0].callable: module 'builtins'" in text
    assert "spec.tasks[1].callable: module 'os'" in text
    assert "spec.tasks[2].source.path" in text
    assert "spec.tasks[3].steps[0].derive.s: '${env.UDOP_JWT_SECRET}'" in text
    assert "spec.tasks[4].target.path" in text


def test_the_platforms_own_secrets_cannot_be_referenced(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    own = "arn:aws:secretsmanager:us-east-1:123456789012:secret:udop/cache-auth-AbC123"
    monkeypatch.setenv("UDOP_STATE_SECRET_ARN", own)
    policy = server_policy(data_root=str(tmp_path))
    for ref in (own, "udop/cache-auth"):  # by ARN or by name
        with pytest.raises(SandboxViolation, match="platform's own secrets"):
            policy.check_secret_ref(ref, what="secret")
    policy.check_secret_ref("team/warehouse", what="secret")
    pipeline = _pipeline(connections={"wh": {"connector": "http", "url": "https://attacker.example",
                                             "auth": {"type": "bearer", "token": {"secret": "udop/cache-auth"}}}},
                         tasks=[{"id": "t", "type": "python", "callable": "tasks:f"}])
    errors = check_definition(pipeline, policy, check_modules=False)
    assert [str(e.path) for e in errors] == ["spec.connections.wh.auth.token"]

    monkeypatch.setenv("UDOP_SECRET_ALLOWLIST", "team/")
    limited = server_policy(data_root=str(tmp_path))
    limited.check_secret_ref("team/warehouse", what="secret")
    with pytest.raises(SandboxViolation, match="UDOP_SECRET_ALLOWLIST"):
        limited.check_secret_ref("other/db", what="secret")
