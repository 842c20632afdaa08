"""Helpers the AWS tests import by name. Not in conftest.py: several test folders have a conftest, and
``from conftest import ...`` gets whichever was imported first."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

EVENTS = Path(__file__).resolve().parents[2] / "events"
LOCALSTACK = bool(os.environ.get("AWS_ENDPOINT_URL"))

in_process_only = pytest.mark.skipif(LOCALSTACK, reason="needs the in-process emulation (moto)")


def load_event(fixture: str, **replace: str) -> dict[str, Any]:
    """A JSON event fixture from tests/events/, with ``{placeholders}`` filled in."""
    text = (EVENTS / fixture).read_text()
    for key, value in replace.items():
        text = text.replace("{" + key + "}", value)
    return json.loads(text)
