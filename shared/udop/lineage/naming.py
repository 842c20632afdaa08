"""Dataset identities (see the package docstring)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

#: the characters that make a path a pattern; a dataset is named by the folder above the first one
_GLOB = re.compile(r"[*?\[{]")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
#: schemes whose names are object keys: ``s3://b/raw/`` and ``s3://b/raw/*.parquet`` name ``s3://b/raw``
_OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "wasbs", "hdfs"})


@dataclass(frozen=True, slots=True)
class Dataset:
    namespace: str
    name: str

    @property
    def uri(self) -> str:
        if "://" not in self.namespace:  # file, sqlite: the name is an absolute path
            return f"{self.namespace}://{self.name}"
        return f"{self.namespace}/{self.name}" if self.name else self.namespace

    @classmethod
    def parse(cls, text: str) -> Dataset:
        """The dataset a stored lineage string names: a dataset URI, an s3:// or local path (the run's
        own intermediate datasets), or an older ``connector:connection`` record."""
        if not _SCHEME.match(text):
            if text.startswith("task:"):
                return cls("udop", text)
            if os.path.isabs(text) or text.startswith(("./", "../", ".")) or ":" not in text:
                return file_dataset(text)
            return cls("udop", text)  # an older record: "postgres:pg"
        scheme, rest = text.split("://", 1)
        if rest.startswith("/"):
            return cls(scheme, rest)
        authority, _, name = rest.partition("/")
        if scheme in _OBJECT_STORES:  # a prefix as the connector names it: no pattern, no final "/"
            name = _strip_glob(name).rstrip("/")
        return cls(f"{scheme}://{authority}", name)


def dataset_uri(text: str) -> str:
    """The canonical URI of what a lineage record names (paths become ``file://`` URIs)."""
    return Dataset.parse(text).uri


def file_dataset(path: str) -> Dataset:
    return Dataset("file", _strip_glob(os.path.abspath(os.path.expanduser(path))))


def _strip_glob(path: str) -> str:
    found = _GLOB.search(path)
    if not found:
        return path
    head = path[:found.start()]
    return head.rsplit("/", 1)[0] if "/" in head else head


def url_dataset(url: str, *, default_port: int | None = None, scheme: str | None = None,
                name: str | None = None) -> Dataset:
    """A dataset from a URL with credentials, query and fragment dropped. ``scheme`` replaces the URL's
    (``postgresql+psycopg`` -> ``postgres``); ``name`` replaces the path; a missing port is
    ``default_port``."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port or default_port
    except ValueError:
        port = default_port
    authority = f"{host}:{port}" if port else host
    if name is None:
        name = _strip_glob(parts.path.lstrip("/")).rstrip("/")
    return Dataset(f"{scheme or parts.scheme}://{authority}", name)


def host_dataset(scheme: str, host: str | None, port: int | None, name: str) -> Dataset:
    host = host or "localhost"
    return Dataset(f"{scheme}://{host}:{port}" if port else f"{scheme}://{host}", name)
