"""The sandbox suite reuses the live-server helpers of tests/integration/api and the emulated AWS
account of tests/integration/aws (imported, not copied), so an attack runs exactly as a client's
request or a Step Functions invocation would."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_INTEGRATION = Path(__file__).resolve().parents[2] / "integration"
if str(_INTEGRATION) not in sys.path:
    sys.path.insert(0, str(_INTEGRATION))

from api.conftest import Api, api, api_factory, tasks_module  # noqa: E402,F401 - fixtures

_spec = importlib.util.spec_from_file_location("udop_sandbox_aws_conftest", _INTEGRATION / "aws" / "conftest.py")
assert _spec is not None and _spec.loader is not None
_aws = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _aws
_spec.loader.exec_module(_aws)
moto_aws = _aws.moto_aws

__all__ = ["Api"]
