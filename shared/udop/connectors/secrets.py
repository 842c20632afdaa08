"""Secrets by reference: ``{env: NAME}``, ``{file: PATH}``, ``{secret: name-or-arn}`` (AWS Secrets
Manager, optionally ``{secret: name, key: field}`` for a JSON secret), or a literal string.

A ``SecretRef`` resolves only when a connection opens, and its ``repr``/``str``/JSON form never
shows the value, so a settings model holding one can be logged or put in an error message.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic_core import CoreSchema, core_schema

from udop import sandbox
from udop.errors import ConfigError, ConnectionFailed
from udop.sandbox import redactor

__all__ = ["MASK", "Secret", "SecretRef", "mask_text"]

MASK = sandbox.MASK


class SecretRef:
    __slots__ = ("_literal", "key", "kind", "ref")

    def __init__(self, kind: str, ref: str, *, key: str | None = None, literal: str | None = None) -> None:
        self.kind = kind  # "literal" | "env" | "file" | "secret"
        self.ref = ref  # the variable name, path or secret id; "" for a literal
        self.key = key
        self._literal = literal

    @classmethod
    def parse(cls, value: Any) -> SecretRef:
        if isinstance(value, SecretRef):
            return value
        if isinstance(value, str):
            return cls("literal", "", literal=value)
        if hasattr(value, "get_secret_value"):  # pydantic SecretStr
            return cls("literal", "", literal=value.get_secret_value())
        if isinstance(value, dict):
            kinds = [k for k in ("env", "file", "secret") if k in value]
            extra = set(value) - {"env", "file", "secret", "key"}
            if len(kinds) == 1 and not extra and isinstance(value[kinds[0]], str):
                key = value.get("key")
                if key is not None and kinds[0] != "secret":
                    raise ValueError("'key' only goes with {secret: ...}")
                return cls(kinds[0], value[kinds[0]], key=key)
        raise ValueError("a secret is a string or one of {env: NAME}, {file: PATH}, {secret: name-or-arn}")

    def describe(self) -> str:
        """Where the secret comes from, never the secret itself."""
        return "a literal value" if self.kind == "literal" else f"{self.kind} {self.ref!r}"

    def get_secret_value(self) -> str:
        """Resolve now, under the active policy (on a server: allowlisted variables, the secrets
        folder). The value is registered with the redactor. Errors name the reference, never a value."""
        value = self._resolve(sandbox.current())
        redactor.add_secret(value)
        return value

    def _resolve(self, policy: sandbox.Policy) -> str:
        if self.kind == "literal":
            return self._literal or ""
        if self.kind == "env":
            policy.check_env(self.ref, what=f"secret {{env: {self.ref}}}")
            value = os.environ.get(self.ref)
            if value is None:
                raise ConfigError(f"secret {{env: {self.ref}}}: environment variable {self.ref} is not set")
            return value
        if self.kind == "file":
            policy.check_secret_file(self.ref, what="secret")
            try:
                return policy.secret_file_path(self.ref).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ConfigError(f"secret {{file: {self.ref}}}: cannot read it ({exc.strerror})") from None
        policy.check_secret_ref(self.ref, what="secret")
        return self._from_secrets_manager()

    def _from_secrets_manager(self) -> str:
        import boto3
        import botocore.exceptions

        try:
            response = boto3.client("secretsmanager").get_secret_value(SecretId=self.ref)
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in (
                "ResourceNotFoundException",
                "AccessDeniedException",
                "DecryptionFailure",
                "InvalidParameterException",
                "InvalidRequestException",
            ):
                raise ConfigError(f"secret {{secret: {self.ref}}}: {code}") from None
            raise ConnectionFailed(f"secret {{secret: {self.ref}}}: Secrets Manager error {code}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise ConnectionFailed(f"secret {{secret: {self.ref}}}: {type(exc).__name__}") from None
        text = response.get("SecretString")
        if text is None:
            text = response["SecretBinary"].decode()
        if self.key is None:
            return str(text)
        try:
            return str(json.loads(text)[self.key])
        except (ValueError, KeyError, TypeError):
            raise ConfigError(
                f"secret {{secret: {self.ref}, key: {self.key}}}: the secret is not a JSON "
                f"object with key {self.key!r}"
            ) from None

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls.parse, serialization=core_schema.plain_serializer_function_ser_schema(_serialize)
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        return {
            "anyOf": [
                {"type": "string"},
                {"type": "object", "properties": {"env": {"type": "string"}}, "required": ["env"]},
                {"type": "object", "properties": {"file": {"type": "string"}}, "required": ["file"]},
                {
                    "type": "object",
                    "properties": {"secret": {"type": "string"}, "key": {"type": "string"}},
                    "required": ["secret"],
                },
            ],
            "description": "a secret: {env: NAME}, {file: PATH}, {secret: name-or-arn} or a literal",
        }

    def __repr__(self) -> str:
        return f"SecretRef({MASK})" if self.kind == "literal" else f"SecretRef({self.kind}={self.ref!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretRef) and (self.kind, self.ref, self.key, self._literal) == (
            other.kind,
            other.ref,
            other.key,
            other._literal,
        )

    def __hash__(self) -> int:
        return hash((self.kind, self.ref, self.key))


def _serialize(value: SecretRef) -> Any:
    if value.kind == "literal":
        return MASK
    out: dict[str, str] = {value.kind: value.ref}
    if value.key:
        out["key"] = value.key
    return out


#: a settings field holding a secret (a password, token, key)
Secret = SecretRef

def mask_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with ``secrets``, every secret the process resolved and what the redactor's rules
    match (a password in a URL) replaced by a mask."""
    for secret in sorted((s for s in secrets if s and len(s) >= 3), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return redactor.redact(text)
