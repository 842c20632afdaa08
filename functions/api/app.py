"""API Lambda: the udop REST API behind API Gateway (REST API, proxy integration), through Mangum.

Thin on purpose: settings are validated and the app is built at cold start; every request is the
FastAPI app's. ``lifespan="off"``: a Lambda has no shutdown hook to run it.
"""

from __future__ import annotations

from typing import Any

from mangum import Mangum

from udop.api import create_app, load_api_settings
from udop.aws.observability import logger
from udop.aws.secrets import url_with_secret
from udop.errors import ConfigError
from udop.settings import ProcessSettings, load_settings
from udop.store import open_store

SETTINGS = load_api_settings()
if SETTINGS.executor != "stepfunctions" and load_settings(ProcessSettings).lambda_function_name:
    # Lambda freezes the process after each answer: a run in a background thread would stall
    raise ConfigError("the API function needs UDOP_EXECUTOR=stepfunctions (runs cannot execute inside it)")
STORE = open_store(url_with_secret(SETTINGS.resolved_database_url, SETTINGS.database_secret_arn))
APP = create_app(SETTINGS, store=STORE)
_ADAPTER = Mangum(APP, lifespan="off")


@logger.inject_lambda_context(correlation_id_path="requestContext.requestId", clear_state=True)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return _ADAPTER(event, context)
