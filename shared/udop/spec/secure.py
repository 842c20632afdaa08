"""A definition checked against a server's policy before it is stored or run, and masked for storage.

``check_definition`` finds, with the place of each: inline secret values (a literal password, token
or key, a URL holding a password), ``${env.X}``/``{env: X}`` outside the allowlist, ``{file:}``
secrets outside the secrets folder, python callables outside the allowed modules and absolute file
paths outside the roots. The API, the deployer and the task runner call it; ``udop run`` does not.

``mask_definition`` is what a store keeps of a trusted definition: the same document with every
inline secret value replaced by a mask.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from udop.errors import SpecError
from udop.sandbox import MASK, Policy, SandboxViolation, looks_secret_name
from udop.spec.location import format_path
from udop.spec.params import find_references

if TYPE_CHECKING:
    from udop.connectors.secrets import SecretRef

__all__ = ["REFERENCE_FORMS", "check_definition", "check_inline_secrets", "inline_secrets", "mask_definition"]

REFERENCE_FORMS = ("{env: NAME} (an allowlisted variable), {secret: name-or-arn} (AWS Secrets Manager) "
                   "or {file: NAME} (the secrets folder)")

_URL_PASSWORD = re.compile(r"[a-zA-Z][\w+.-]*://[^:/@\s]*:(?P<pw>[^@\s]+)@")
_REF_ONLY = re.compile(r"^\s*\$\{\s*[A-Za-z_]\w*\.[A-Za-z_][\w.-]*\s*\}\s*$")
_REF_KINDS = ("env", "file", "secret")
#: keys under an ``auth`` block that hold the secret itself (``{type: api_key, name, value}``)
_AUTH_SECRET_KEYS = frozenset({"value", "password", "token"})

Path = tuple[str | int, ...]


def _is_reference(value: Any) -> bool:
    return isinstance(value, Mapping) and any(k in value for k in _REF_KINDS) and set(value) <= {
        *_REF_KINDS, "key"}


def _secret_key(path: Path) -> bool:
    if not path or not isinstance(path[-1], str):
        return False
    if looks_secret_name(path[-1]) and path[-1] not in ("auth", "key"):
        return True
    return path[-1] in _AUTH_SECRET_KEYS and any(isinstance(p, str) and p == "auth" for p in path[:-1])


def _walk(value: Any, path: Path) -> Iterator[tuple[Path, Any]]:
    yield path, value
    if isinstance(value, Mapping) and not _is_reference(value):
        for k, v in value.items():
            yield from _walk(v, (*path, str(k)))
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from _walk(v, (*path, i))


def inline_secrets(doc: Any, path: Path = ()) -> Iterator[tuple[Path, str]]:
    """``(path, why)`` for every secret value written into ``doc`` itself."""
    # a SecretRef exists only once its module is imported; importing it here would pull in the whole
    # connector framework (pyarrow), which the API Lambda does not carry and `udop run` need not load
    module = sys.modules.get("udop.connectors.secrets")
    secret_ref: type[SecretRef] | None = getattr(module, "SecretRef", None)

    for where, value in _walk(doc, path):
        if secret_ref is not None and isinstance(value, secret_ref):
            if value.kind == "literal":
                yield where, "holds a secret value written inline"
        elif isinstance(value, str):
            if _secret_key(where) and value and value != MASK and not _REF_ONLY.match(value):
                yield where, "holds a secret value written inline"
            else:
                m = _URL_PASSWORD.search(value)
                if m and m.group("pw") != MASK and not _REF_ONLY.match(m.group("pw")):
                    yield where, "is a URL with a password written inline"


def _references(doc: Any, path: Path = ()) -> Iterator[tuple[Path, SecretRef]]:
    from udop.connectors.secrets import SecretRef

    for where, value in _walk(doc, path):
        if isinstance(value, SecretRef) and value.kind != "literal":
            yield where, value
        elif _is_reference(value):
            try:
                yield where, SecretRef.parse(dict(value))
            except ValueError:
                continue


def _dump(pipeline: Any) -> dict[str, Any]:
    # python mode keeps SecretRef objects, so a literal is told from a reference
    return dict(pipeline.model_dump(mode="python", by_alias=True, exclude_defaults=True))


def check_inline_secrets(pipeline: Any) -> list[SpecError]:
    """A located error for every secret value written into the definition."""
    return [SpecError(f"{why}; a server stores no secrets: use {REFERENCE_FORMS}", path=format_path(where))
            for where, why in inline_secrets(_dump(pipeline))]


def check_definition(pipeline: Any, policy: Policy, *, check_modules: bool = True) -> list[SpecError]:
    """Every way ``pipeline`` oversteps a server's ``policy``; nothing on a trusted one.
    ``check_modules=False`` where the python code is not at hand (the deployer, the API Lambda)."""
    if not policy.is_server:
        return []
    doc = _dump(pipeline)
    errors = check_inline_secrets(pipeline)

    def error(path: Path, message: str) -> None:
        errors.append(SpecError(message, path=format_path(path)))
    for where, ns, name in find_references(doc):
        if ns == "env" and name not in policy.env_allowlist:
            error(where, f"'${{env.{name}}}': environment variable {name!r} is not in this server's "
                  "allowlist (UDOP_ENV_ALLOWLIST)")
    for where, ref in _references(doc):
        try:
            if ref.kind == "env":
                policy.check_env(ref.ref, what="secret")
            elif ref.kind == "file":
                policy.check_secret_file(ref.ref, what="secret")
            else:
                policy.check_secret_ref(ref.ref, what="secret")
        except SandboxViolation as exc:
            error(where, str(exc).removeprefix("secret: "))
    for i, task in enumerate(pipeline.spec.tasks):
        if task.type == "python" and check_modules:
            module, _, attr = task.callable.partition(":")
            try:
                policy.check_module(module, what="callable")
            except SandboxViolation as exc:
                error(("spec", "tasks", i, "callable"), str(exc).removeprefix("callable: "))
            if any(part.startswith("_") for part in attr.split(".")):
                error(("spec", "tasks", i, "callable"),
                      f"{task.callable!r}: a server runs only public functions (no name starting with '_')")
        for part in ("source", "target"):
            spec = getattr(task, part, None) if task.type in ("extract", "load") else None
            path = getattr(spec, "path", None)
            # relative and templated paths are checked where they run (they depend on the run)
            if isinstance(path, str) and "${" not in path and (path.startswith("/") or ".." in path):
                try:
                    policy.confine(path, what="path")
                except SandboxViolation as exc:
                    error(("spec", "tasks", i, part, "path"), str(exc).removeprefix("path: "))
    return errors


def stored_definition(pipeline: Any) -> dict[str, Any]:
    """The one form of a validated ``Pipeline`` that is stored, hashed and compared (registration by
    ``udop run``, the API and the deployer; resume's version check): the keys the definition set
    (defaults filled in would reach connectors as options they refuse, e.g. ``path: null``), with
    inline secret values masked."""
    doc: dict[str, Any] = mask_definition(pipeline.model_dump(mode="json", by_alias=True, exclude_unset=True))
    return doc


def mask_definition(doc: Any) -> Any:
    """``doc`` (a definition as JSON) with every inline secret value masked; references stay."""
    hits = {where for where, _ in inline_secrets(doc)}
    if not hits:
        return doc
    return _mask(doc, (), hits)


def _mask(value: Any, path: Path, hits: set[Path]) -> Any:
    if path in hits and isinstance(value, str):
        if _secret_key(path):
            return MASK
        return _URL_PASSWORD.sub(lambda m: m.group(0).replace(m.group("pw"), MASK), value)
    if isinstance(value, Mapping) and not _is_reference(value):
        return {k: _mask(v, (*path, str(k)), hits) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v, (*path, i), hits) for i, v in enumerate(value)]
    return value
