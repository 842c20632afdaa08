"""Where in a definition something is: the key path of a value (``spec.tasks[2].depends_on[0]``).
A leaf: the loader, the DAG and parameter checks and the server checks all name locations this way."""

from __future__ import annotations

__all__ = ["PathKey", "format_path"]

PathKey = tuple[str | int, ...]


def format_path(path: PathKey) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
