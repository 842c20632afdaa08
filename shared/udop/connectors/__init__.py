"""The connector framework: read sources and write targets as streams of Arrow record batches.

Connectors are found through the entry point group ``udop.connectors``; the built-in ones live in
``layers/connectors`` (package ``udop_connectors``). See docs/connectors.md and
docs/connector_development.md.
"""

from __future__ import annotations

from udop.connectors.base import Connector, ConnectorSettings, IncrementalSpec, LoadEntry, WriteMode
from udop.connectors.breaker import BreakerSettings, CircuitBreaker, CircuitOpen
from udop.connectors.io import (
    commit_watermarks,
    dataset_of,
    extract_to_parquet,
    iter_parquet,
    load_from_parquet,
    schema_fingerprint,
)
from udop.connectors.registry import available_connectors, connector_class, get_connector, register_connector
from udop.connectors.secrets import Secret, SecretRef, mask_text

__all__ = [
    "BreakerSettings",
    "CircuitBreaker",
    "CircuitOpen",
    "Connector",
    "ConnectorSettings",
    "IncrementalSpec",
    "LoadEntry",
    "Secret",
    "SecretRef",
    "WriteMode",
    "available_connectors",
    "commit_watermarks",
    "connector_class",
    "dataset_of",
    "extract_to_parquet",
    "get_connector",
    "iter_parquet",
    "load_from_parquet",
    "mask_text",
    "register_connector",
    "schema_fingerprint",
]
