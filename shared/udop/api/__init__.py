"""The udop REST API: pipelines and runs over HTTP, with JWT/API-key auth, roles and an audit log.

``create_app(settings)`` builds the FastAPI application; ``udop serve`` runs it with uvicorn and
``functions/api/app.py`` runs it in Lambda behind API Gateway.
"""

from __future__ import annotations

from udop.api.app import create_app
from udop.api.settings import ApiSettings, load_api_settings

__all__ = ["ApiSettings", "create_app", "load_api_settings"]
