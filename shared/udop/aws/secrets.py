"""Passwords of the metadata database and the state cache, read from Secrets Manager at cold start.

The CDK app gives the functions URLs without a password (``UDOP_DATABASE_URL``,
``UDOP_STATE_URL``) and the ARN of the secret that holds it (``UDOP_DATABASE_SECRET_ARN``: the RDS
secret, JSON with ``password``; ``UDOP_STATE_SECRET_ARN``: the Redis AUTH token as plain text).
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

from udop.errors import ConfigError

__all__ = ["url_with_secret"]


def _password(secret_string: str) -> str:
    try:
        value = json.loads(secret_string)
    except ValueError:
        return secret_string
    if isinstance(value, dict):
        if "password" not in value:
            raise ConfigError("the secret is JSON without a 'password' key")
        return str(value["password"])
    return secret_string


def url_with_secret(url: str, secret_arn: str | None, client: Any = None) -> str:
    """``url`` with the password from ``secret_arn`` put in (unchanged when no ARN is given)."""
    if not secret_arn:
        return url
    if client is None:
        import boto3

        client = boto3.client("secretsmanager")
    try:
        secret = client.get_secret_value(SecretId=secret_arn)["SecretString"]
        password = _password(secret)
    except ConfigError as exc:
        raise ConfigError(f"secret {secret_arn}: {exc}") from None
    except Exception as exc:  # botocore ClientError: not found, access denied
        raise ConfigError(f"cannot read secret {secret_arn}: {exc}") from None
    parts = urllib.parse.urlsplit(url)
    if "@" in parts.netloc:
        userinfo, host = parts.netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
    else:
        user, host = "", parts.netloc
    netloc = f"{user}:{urllib.parse.quote(password, safe='')}@{host}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
