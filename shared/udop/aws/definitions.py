"""Where definitions live in the definitions bucket, and reading a deployed version back.

* ``pipelines/<name>.yaml`` / ``.json``: what users upload (the deployer's trigger)
* ``pipelines/<name>.status.json``: the deployer's report on the last upload (ok or errors)
* ``versions/<name>/<version>.json``: the validated definition a state machine version was compiled
  from; the task runner loads exactly this, never the latest upload
"""

from __future__ import annotations

import threading
from typing import Any

from udop.aws.s3 import get_json, put_json
from udop.errors import FatalError

__all__ = ["DefinitionCache", "canonical_definition", "status_key", "upload_key", "version_key"]


def upload_key(name: str, suffix: str = ".yaml") -> str:
    return f"pipelines/{name}{suffix}"


def status_key(name: str) -> str:
    return f"pipelines/{name}.status.json"


def version_key(name: str, version: int) -> str:
    return f"versions/{name}/{version}.json"


def canonical_definition(pipeline: Any) -> dict[str, Any]:
    """The JSON form of a validated ``Pipeline`` that is stored and hashed: the keys the definition set,
    as the API and ``udop run`` store it (defaults filled in would reach connectors as options they
    refuse, e.g. ``path: null``)."""
    from udop.spec.secure import stored_definition

    return stored_definition(pipeline)


def put_version(s3: Any, bucket: str, name: str, version: int, definition: dict[str, Any]) -> None:
    put_json(s3, bucket, version_key(name, version), definition)


class DefinitionCache:
    """Deployed definitions by (name, version); versions never change, so a warm Lambda keeps them."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str, int], Any] = {}
        self._mutex = threading.Lock()

    def get(self, s3: Any, bucket: str, name: str, version: int) -> Any:
        from udop.spec.models import Pipeline

        with self._mutex:
            hit = self._cache.get((bucket, name, version))
        if hit is not None:
            return hit
        data = get_json(s3, bucket, version_key(name, version))
        if data is None:
            raise FatalError(f"pipeline {name!r} version {version} is not deployed: "
                             f"s3://{bucket}/{version_key(name, version)} does not exist; "
                             "deploy it again with `udop deploy`")
        pipeline = Pipeline.model_validate(data)
        with self._mutex:
            self._cache[(bucket, name, version)] = pipeline
        return pipeline
