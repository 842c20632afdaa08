"""S3 staging: copy datasets between ``s3://<bucket>/runs/...`` and a local folder, small JSON objects.

The task code reads and writes local files (the same code the LocalExecutor runs); the runner maps
the deterministic S3 keys onto the same relative paths under a local root and back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from udop.errors import FatalError

__all__ = ["S3Staging", "split_uri"]


def split_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    if not uri.startswith("s3://"):
        raise FatalError(f"{uri!r} is not an s3:// URI")
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


class S3Staging:
    """Maps ``<remote_root>/<rel>`` (``s3://bucket[/prefix]``) onto ``<local_root>/<rel>`` and moves
    files between the two."""

    def __init__(self, s3: Any, remote_root: str, local_root: Path) -> None:
        self.s3 = s3
        self.remote_root = remote_root.rstrip("/")
        self.bucket, prefix = split_uri(self.remote_root + "/")
        self.prefix = prefix  # "" or "some/prefix/"
        self.local_root = local_root

    def to_local(self, uri: str) -> str:
        """The local path of an S3 URI under the remote root (other URIs are returned unchanged)."""
        if not uri.startswith(self.remote_root + "/"):
            return uri
        rel = uri.removeprefix(self.remote_root + "/")
        local = str(self.local_root / rel)
        return local + "/" if uri.endswith("/") else local

    def to_remote(self, path: str) -> str:
        """The S3 URI of a local path under the staging root (other values are returned unchanged)."""
        root = str(self.local_root)
        if not path.startswith(root + "/"):
            return path
        return f"{self.remote_root}/{path.removeprefix(root + '/')}"

    def download(self, uri: str) -> int:
        """Copy every object under ``uri`` (a prefix ending in ``/``, or one key) to its local path.

        Returns the number of files copied."""
        if not uri.startswith(self.remote_root + "/"):
            raise FatalError(f"{uri}: datasets must live under the data root {self.remote_root}/")
        bucket, key = split_uri(uri)
        if not key.endswith("/"):
            target = Path(self.to_local(uri))
            target.parent.mkdir(parents=True, exist_ok=True)
            self.s3.download_file(bucket, key, str(target))
            return 1
        count = 0
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
            for obj in page.get("Contents", []):
                if obj["Key"].endswith("/"):
                    continue
                target = Path(self.to_local(f"s3://{bucket}/{obj['Key']}"))
                target.parent.mkdir(parents=True, exist_ok=True)
                self.s3.download_file(bucket, obj["Key"], str(target))
                count += 1
        return count

    def upload(self, local: str) -> tuple[int, int]:
        """Copy a local file or folder to its S3 location, replacing what was there.

        Objects left under the prefix by an earlier failed attempt are deleted first, so the prefix
        holds exactly this attempt's files. Returns ``(files, bytes)``."""
        path = Path(local)
        remote = self.to_remote(str(path) + ("/" if path.is_dir() else ""))
        bucket, key = split_uri(remote)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        if path.is_dir():
            self.delete_prefix(key)
        total = 0
        for file in files:
            rel = file.relative_to(path).as_posix() if path.is_dir() else ""
            self.s3.upload_file(str(file), bucket, key + rel)
            total += file.stat().st_size
        return len(files), total

    def delete_prefix(self, key: str) -> None:
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=key):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})


def put_json(s3: Any, bucket: str, key: str, body: Any) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(body, indent=2, default=str).encode(),
                  ContentType="application/json")


def get_json(s3: Any, bucket: str, key: str) -> Any | None:
    """The parsed object, or None when the key does not exist."""
    try:
        obj = s3.get_object(Bucket=bucket, Key=key)
    except s3.exceptions.NoSuchKey:
        return None
    return json.loads(obj["Body"].read())
