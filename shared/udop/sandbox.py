"""What a definition may touch: the trust policy of the process running it, and the one redactor.

Two modes. ``trusted`` is ``udop run`` on your own machine: a definition may read any file,
environment variable or module you can. ``server`` is the API (local or Lambda), the deployer and the
task runner, where definitions come from other people: paths are confined to configured roots,
``${env.X}`` and ``{env: X}`` read only an allowlist, ``{file:}`` secrets only the secrets folder,
python callables only allowed modules, and DuckDB runs locked down (see ``udop_transforms``).

The process entry point builds one ``Policy`` (``server_policy`` from ``UDOP_SANDBOX_*`` settings)
and hands it to where work runs; ``run_task`` makes it the active policy of the attempt's thread, so
code deep below (secret references, callable imports) asks ``current()`` instead of threading it
through every signature. This module is a leaf: it imports nothing of udop but the errors.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from udop.errors import FatalError
from udop.masking import apply_setting
from udop.redaction import MASK, Redactor, looks_secret_name, redactor
from udop.settings import CodeSettings, PlatformSecrets, load_settings

__all__ = [
    "MASK",
    "OUTPUT_MARKER",
    "Policy",
    "Redactor",
    "SandboxSettings",
    "SandboxViolation",
    "TrustMode",
    "active",
    "current",
    "install_log_redaction",
    "looks_secret_name",
    "noting_secrets",
    "redactor",
    "server_policy",
]

TrustMode = Literal["trusted", "server"]

#: the file udop writes into every folder it publishes; server mode overwrites only folders holding it
OUTPUT_MARKER = ".udop-output"

_GLOB = re.compile(r"[*?\[]")
class SandboxViolation(FatalError):
    """A definition asked for something the server's policy does not allow; a retry cannot help."""


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (value or "").split(",") if p.strip())


class SandboxSettings(PlatformSecrets, CodeSettings):
    """The server-mode policy's settings (prefix ``UDOP_``); lists are comma-separated. The platform's
    own secrets (``PlatformSecrets``) are never readable by a definition."""

    sandbox_roots: str = Field("", description="folders (or s3:// prefixes) server-mode sources and "
                               "targets may use, besides the data root")
    env_allowlist: str = Field("", description="environment variables ${env.X} and {env: X} may read "
                               "in server mode (none by default)")
    secrets_dir: Path | None = Field(None, description="the only folder {file: ...} secrets are read "
                                     "from in server mode (none: {file:} refused)")
    python_modules: str = Field("", description="top-level modules python tasks may name in server mode "
                                "(default: the modules in UDOP_CODE_DIR)")
    secret_allowlist: str = Field("", description="name prefixes {secret: ...} may reference in server "
                                  "mode (none: any secret the role can read, except the platform's own)")


def _settings() -> SandboxSettings:
    return load_settings(SandboxSettings)


def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


@dataclass(frozen=True)
class Policy:
    """What work in this process may touch. ``trusted()``: everything; ``server_policy()``: the roots,
    variables, secrets folder and modules the platform's configuration names."""

    mode: TrustMode = "trusted"
    roots: tuple[str, ...] = ()
    env_allowlist: frozenset[str] = frozenset()
    secrets_dir: str | None = None
    python_modules: tuple[str, ...] = ()
    code_dir: str | None = None
    #: name prefixes ``{secret: ...}`` may use (empty: any but ``platform_secrets``)
    secret_prefixes: tuple[str, ...] = ()
    #: the platform's own secrets (database, Redis AUTH): no definition may reference them
    platform_secrets: frozenset[str] = frozenset()
    #: DuckDB extensions a server-mode session may use: the ones linked into udop's DuckDB
    extensions: tuple[str, ...] = ("core_functions", "icu", "json", "parquet")

    @classmethod
    def trusted(cls) -> Policy:
        return cls()

    @property
    def is_server(self) -> bool:
        return self.mode == "server"

    def with_roots(self, *roots: str) -> Policy:
        from dataclasses import replace

        return replace(self, roots=tuple(dict.fromkeys((*self.roots, *roots))))

    # -- paths -----------------------------------------------------------------------------------
    def local_roots(self) -> tuple[Path, ...]:
        return tuple(_real(r) for r in self.roots if "://" not in r)

    def allowed_directories(self) -> list[str]:
        """The roots as DuckDB's ``allowed_directories`` wants them (real paths ending in ``/``)."""
        return [str(r).rstrip("/") + "/" for r in self.local_roots()]

    def confine(self, path: str, *, what: str) -> str:
        """``path`` if a server may use it: inside a root once ``..``, symlinks and globs are
        resolved. ``what`` names the field for the error (``source.path``)."""
        if not self.is_server:
            return path
        if "://" in path:
            if any(path.startswith(r.rstrip("/") + "/") for r in self.roots if "://" in r):
                return path
            raise SandboxViolation(f"{what}: {path!r} is not below an allowed root; a server reads and "
                                   f"writes only below {self._roots_text()}")
        if ".." in Path(path).parts:
            raise SandboxViolation(f"{what}: {path!r} contains '..'; give a path below "
                                   f"{self._roots_text()}")
        fixed = []
        for part in Path(path).parts:
            if _GLOB.search(part):
                break
            fixed.append(part)
        prefix = _real(Path(*fixed)) if fixed else _real(".")
        if not any(_within(prefix, root) for root in self.local_roots()):
            raise SandboxViolation(f"{what}: {path!r} is outside the folders this server may use "
                                   f"({self._roots_text()}); set UDOP_SANDBOX_ROOTS to allow a folder")
        return path

    def confine_files(self, files: Iterable[str], *, what: str) -> list[str]:
        """Each matched file must itself be inside a root (no symlink out of one)."""
        out = list(files)
        if self.is_server:
            roots = self.local_roots()
            for name in out:
                if not any(_within(_real(name), root) for root in roots):
                    raise SandboxViolation(f"{what}: {name!r} leads outside the folders this server may "
                                           f"use (a symbolic link?); it is not read")
        return out

    def _roots_text(self) -> str:
        return ", ".join(self.roots) or "(no folder configured)"

    # -- environment and secrets -----------------------------------------------------------------
    def environ(self) -> Mapping[str, str]:
        """The environment ``${env.X}`` sees: all of it when trusted, the allowlist on a server."""
        if not self.is_server:
            return os.environ
        return {k: v for k, v in os.environ.items() if k in self.env_allowlist}

    def check_env(self, name: str, *, what: str) -> None:
        if self.is_server and name not in self.env_allowlist:
            raise SandboxViolation(f"{what}: environment variable {name!r} is not in this server's "
                                   "allowlist (UDOP_ENV_ALLOWLIST); use {secret: ...} for a secret")

    def check_secret_file(self, path: str, *, what: str) -> None:
        if not self.is_server:
            return
        if self.secrets_dir is None:
            raise SandboxViolation(f"{what}: {{file: {path}}} secrets are off on this server (no "
                                   "UDOP_SECRETS_DIR); use {secret: ...}")
        folder = _real(self.secrets_dir)
        if ".." in Path(path).parts or not _within(_real(folder / path), folder):
            raise SandboxViolation(f"{what}: {{file: {path}}} is not inside the secrets folder "
                                   f"{self.secrets_dir}")

    def check_secret_ref(self, ref: str, *, what: str) -> None:
        """``{secret: ref}``: not one of the platform's own secrets, and within the allowlist if set."""
        if not self.is_server:
            return
        name = _secret_name(ref)
        if any(name == _secret_name(own) for own in self.platform_secrets):
            raise SandboxViolation(f"{what}: {{secret: {ref}}} is one of the platform's own secrets; "
                                   "a definition may not use it")
        if self.secret_prefixes and not any(name.startswith(p) for p in self.secret_prefixes):
            raise SandboxViolation(f"{what}: {{secret: {ref}}} is not in this server's allowlist "
                                   f"(UDOP_SECRET_ALLOWLIST: {', '.join(self.secret_prefixes)})")

    def secret_file_path(self, path: str) -> Path:
        """Where a ``{file:}`` secret is read: relative to the secrets folder on a server."""
        if self.is_server and self.secrets_dir is not None:
            return _real(Path(self.secrets_dir) / path)
        return Path(path).expanduser()

    # -- python ----------------------------------------------------------------------------------
    def check_module(self, module: str, *, what: str) -> None:
        """Refuse a python task's module unless the policy allows it (before importing anything)."""
        if not self.is_server:
            return
        top = module.split(".", maxsplit=1)[0]
        if top in self.allowed_modules():
            return
        allowed = ", ".join(self.allowed_modules()) or "none: set UDOP_CODE_DIR or UDOP_PYTHON_MODULES"
        raise SandboxViolation(f"{what}: module {module!r} is not one this server runs python tasks from "
                               f"(allowed: {allowed})")

    def allowed_modules(self) -> tuple[str, ...]:
        if self.python_modules:
            return self.python_modules
        if not self.code_dir or not Path(self.code_dir).is_dir():
            return ()
        found = []
        for entry in sorted(Path(self.code_dir).iterdir()):
            if entry.name.startswith((".", "_")):
                continue
            if entry.suffix == ".py":
                found.append(entry.stem)
            elif entry.is_dir() and (entry / "__init__.py").exists():
                found.append(entry.name)
        return tuple(found)


def noting_secrets(environ: Mapping[str, str]) -> Mapping[str, str]:
    """``environ`` as ``${env.X}`` reads it: a secret-named variable's value is registered with the
    redactor when it is read, so a ``${env.API_TOKEN}`` passed as an argument is masked in the errors
    and logs it reaches."""
    return _SecretNoting(environ)


class _SecretNoting(Mapping[str, str]):
    def __init__(self, data: Mapping[str, str]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> str:
        value = self._data[key]
        if looks_secret_name(key):
            redactor.add_secret(value)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data


def _secret_name(ref: str) -> str:
    """A Secrets Manager reference by name or ARN, as its name (an ARN's random suffix dropped)."""
    if ref.startswith("arn:") and ":secret:" in ref:
        name = ref.split(":secret:", 1)[1]
        return re.sub(r"-[A-Za-z0-9]{6}$", "", name)
    return ref


def server_policy(*, data_root: str | None, roots: Iterable[str] = (), code_dir: str | None = None,
                  settings: SandboxSettings | None = None) -> Policy:
    """The server-mode policy: the data root and ``UDOP_SANDBOX_ROOTS`` (and ``roots``), the env
    allowlist, secrets folder and python modules from settings. Registers the host's secret-looking
    environment values with the redactor, so none can reach a response or a log."""
    s = settings or _settings()
    all_roots = [r for r in (data_root, *roots, *_split(s.sandbox_roots)) if r]
    redactor.add_environment_secrets()
    install_log_redaction()
    apply_setting(server=True)
    return Policy(
        mode="server",
        roots=tuple(dict.fromkeys(str(r) for r in all_roots)),
        env_allowlist=frozenset(_split(s.env_allowlist)),
        secrets_dir=str(s.secrets_dir) if s.secrets_dir else None,
        python_modules=_split(s.python_modules),
        code_dir=code_dir or s.code_dir or None,
        secret_prefixes=_split(s.secret_allowlist),
        platform_secrets=frozenset(a for a in (s.state_secret_arn, s.database_secret_arn) if a),
    )


_active: contextvars.ContextVar[Policy | None] = contextvars.ContextVar("udop_policy", default=None)
_TRUSTED = Policy.trusted()


def current() -> Policy:
    """The policy of the work running in this thread (trusted outside any ``active`` block)."""
    return _active.get() or _TRUSTED


@contextmanager
def active(policy: Policy) -> Iterator[Policy]:
    token = _active.set(policy)
    try:
        yield policy
    finally:
        _active.reset(token)


def _redact_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a malformed call (wrong args) is logging's to report, not ours
        return
    clean = redactor.redact(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
        record.exc_text = redactor.redact(logging.Formatter().formatException(record.exc_info))


def install_log_redaction() -> None:
    """Every log record of this process, from any logger to any handler (uvicorn's, Powertools',
    the CLI's), is redacted when it is created: message and traceback. Idempotent."""
    previous = logging.getLogRecordFactory()
    if factory_installed(previous, "udop_redacting"):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _redact_record(record)
        return record

    factory.udop_redacting = True  # type: ignore[attr-defined]
    factory.udop_previous = previous  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def factory_installed(factory: Any, marker: str) -> bool:
    """Whether a record factory marked ``marker`` is ``factory`` or below it in udop's chain (another
    udop factory may have been put on top since: installing again would run it twice per record)."""
    while factory is not None:
        if getattr(factory, marker, False):
            return True
        factory = getattr(factory, "udop_previous", None)
    return False
