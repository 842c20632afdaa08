"""Lineage records pass the one redactor (``udop.sandbox.redactor``) before they are stored or sent.

A dataset's name (a path, a key prefix, a table, a queue) is masked like any other text a user sees:
secret values resolved in this process, a URL's password, and the PII detectors when they are on
(``UDOP_MASK_PII``; an e-mail address in an S3 prefix is not kept). The namespace is a scheme, host
and port: its user info is dropped, and nothing else is masked there, because an IP address in it is
the dataset's identity (``postgres://10.0.0.5:5432``), not personal data.
"""

from __future__ import annotations

from collections.abc import Iterable

from udop.lineage.naming import Dataset
from udop.sandbox import redactor

__all__ = ["masked_dataset", "masked_text", "masked_uri", "masked_uris"]


def masked_text(text: str) -> str:
    """``text`` (an error message, a query) with secrets and PII masked."""
    return redactor.redact(text)


def masked_dataset(dataset: Dataset) -> Dataset:
    namespace = dataset.namespace
    if "://" in namespace:
        scheme, authority = namespace.split("://", 1)
        authority = authority.rsplit("@", 1)[-1]  # user info never names a dataset
        namespace = f"{scheme}://{authority}"
    return Dataset(namespace, redactor.redact(dataset.name) if dataset.name else dataset.name)


def masked_uri(uri: str | None) -> str | None:
    """A stored lineage string with its dataset masked; ``task:<id>`` and older records pass as text."""
    if not uri:
        return uri
    if "://" not in uri:
        return redactor.redact(uri)
    parsed = Dataset.parse(uri)
    masked = masked_dataset(parsed)
    return uri if masked == parsed else masked.uri


def masked_uris(uris: Iterable[str]) -> list[str]:
    return [masked_uri(u) or u for u in uris]
