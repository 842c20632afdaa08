"""One settings base for every process: configuration is read from the environment only through
``udop.settings`` (``UdopSettings`` + ``load_settings``), which names every bad variable at once.
A raw ``os.environ`` / ``os.getenv`` elsewhere is a setting declared twice or read without checks."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from udop.errors import ConfigError
from udop.settings import UdopSettings, load_settings

ROOT = Path(__file__).resolve().parents[3]
FOLDERS = ("shared/udop", "layers/connectors/udop_connectors", "layers/transforms/udop_transforms",
           "functions", "infra/udop_infra", "infra/app.py")

#: the modules that may touch the environment, and why: none of them reads a udop setting
ALLOWED = {
    "shared/udop/settings.py": "the settings loader itself",
    "shared/udop/sandbox.py": "Policy.environ(): the variables a definition's ${env.X} may read",
    "shared/udop/spec/params.py": "${env.X} in a trusted definition reads the user's environment",
    "shared/udop/connectors/secrets.py": "a connection's {env: NAME} secret reference",
    "shared/udop/redaction.py": "registers secret-looking variables' values with the redactor",
    "layers/transforms/udop_transforms/_validate.py": "${env.X} at check time (a user's variable)",
    "infra/app.py": "sets a variable for the jsii node subprocess",
    "shared/udop/aws/emulate.py": "points boto3 at the rehearsal's moto account for its duration",
}


def _files() -> list[Path]:
    out: list[Path] = []
    for folder in FOLDERS:
        path = ROOT / folder
        out += [path] if path.is_file() else sorted(path.rglob("*.py"))
    return [p for p in out if "cdk.out" not in p.parts]


def _environment_reads(tree: ast.AST) -> list[int]:
    def reads(node: ast.AST) -> bool:
        if isinstance(node, ast.Attribute):
            return isinstance(node.value, ast.Name) and node.value.id == "os" \
                and node.attr in ("environ", "getenv", "environb", "putenv")
        return isinstance(node, ast.ImportFrom) and node.module == "os" \
            and any(a.name in ("environ", "getenv") for a in node.names)

    return [node.lineno for node in ast.walk(tree) if reads(node)]


def test_only_the_settings_module_reads_the_environment() -> None:
    found = []
    for path in _files():
        rel = path.relative_to(ROOT).as_posix()
        if rel in ALLOWED:
            continue
        found += [f"{rel}:{line}" for line in _environment_reads(ast.parse(path.read_text(), rel))]
    assert found == [], "read these through a UdopSettings class and load_settings: " + ", ".join(found)


def test_the_allowlist_is_not_stale() -> None:
    stale = [rel for rel in ALLOWED if not _environment_reads(ast.parse((ROOT / rel).read_text(), rel))]
    assert stale == []


class _Example(UdopSettings):
    data_bucket: str
    workers: int = 1
    state_url: str | None = None


def test_one_message_names_every_bad_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UDOP_DATA_BUCKET", raising=False)
    monkeypatch.setenv("UDOP_WORKERS", "many")
    with pytest.raises(ConfigError) as caught:
        load_settings(_Example)
    message = str(caught.value)
    assert "UDOP_DATA_BUCKET is missing" in message and "UDOP_WORKERS:" in message
    assert "\n" not in message


def test_a_changed_variable_is_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UDOP_DATA_BUCKET", "first")
    assert load_settings(_Example).data_bucket == "first"
    monkeypatch.setenv("UDOP_DATA_BUCKET", "second")
    assert load_settings(_Example).data_bucket == "second"


def test_every_process_settings_class_derives_from_the_one_base() -> None:
    from udop.alerts import AlertSettings
    from udop.api.settings import ApiSettings
    from udop.aws.settings import DeployerSettings, EventsSettings, RunnerSettings
    from udop.masking import MaskingSettings
    from udop.sandbox import SandboxSettings
    from udop.settings import AwsResources, ProcessSettings, Settings

    classes = (AlertSettings, ApiSettings, DeployerSettings, EventsSettings, RunnerSettings, MaskingSettings,
               SandboxSettings, AwsResources, ProcessSettings, Settings)
    assert all(issubclass(c, UdopSettings) for c in classes)
