"""``udop serve`` (the API on uvicorn) and ``udop api-key`` (service-account keys), as Click commands.

The main CLI registers them: ``cli.add_command(serve)`` and ``cli.add_command(api_key)``.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from udop.errors import UdopError

if TYPE_CHECKING:  # imported lazily below: `udop --help` must not pay for SQLAlchemy
    from sqlalchemy import Engine

    from udop.api.keys import ApiKeys

__all__ = ["api_key", "serve"]


@click.command("serve")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="interface to listen on; 0.0.0.0 exposes the API to the network",
)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
)
@click.option(
    "--access-log/--no-access-log",
    default=True,
    show_default=True,
    help="one log line per request (formatted and redacted like every line: CPU on each request)",
)
@click.option("--scheduler", "with_scheduler", is_flag=True,
              help="Also start the runs of registered pipelines that have a schedule (docs/scheduling.md).")
def serve(host: str, port: int, log_level: str, access_log: bool, with_scheduler: bool) -> None:
    """Serve the REST API (OpenAPI at /openapi.json, docs at /docs).

    Settings come from UDOP_* variables: UDOP_DATABASE_URL, UDOP_JWT_SECRET, UDOP_JWKS_URL, ...
    Triggered runs execute in this process, in the background.
    """
    import uvicorn

    from udop.api.app import create_app

    try:
        app = create_app()
    except UdopError as exc:
        raise click.ClickException(str(exc)) from None
    # Runs and definition parses are CPU-bound threads of this process; a shorter GIL switch interval
    # (default 5 ms) lets the event loop answer between their slices (benchmarks/api_hostile_upload.py)
    sys.setswitchinterval(0.001)
    # one process: local runs execute in its threads, and a second process would not see them
    # log_config=None: uvicorn's loggers go through udop's one setup (--log-format, ids, redaction)
    from udop.schedule.scheduler import serve_scheduler

    halt = serve_scheduler(app.state.udop) if with_scheduler else None
    try:
        # http and loop "auto": httptools and uvloop, which the api extra installs (benchmarks/api_runs.py)
        uvicorn.run(app, host=host, port=port, log_level=log_level, workers=1, proxy_headers=False,
                    log_config=None, access_log=access_log)
    finally:
        if halt is not None:
            halt()


@click.group("api-key")
def api_key() -> None:
    """Create, list and revoke API keys of service accounts."""


@api_key.command("create")
@click.option("--name", required=True, help="what the service account is, e.g. 'airflow-prod'")
@click.option("--role", required=True, type=click.Choice(["viewer", "operator", "admin"]))
def create_key(name: str, role: str) -> None:
    """Create a key; it is printed once and stored only as a hash."""
    from udop.api.audit import AuditLog

    keys, engine = _keys()
    record, key = keys.create(name=name, role=role, created_by="cli")
    AuditLog(engine).record(
        actor="cli",
        actor_kind="cli",
        role=None,
        action="create_api_key",
        method="CLI",
        path="udop api-key create",
        status=201,
        detail=f"api key {record.id} ({record.name}, {record.role})",
    )
    click.echo(f"id:   {record.id}\nrole: {record.role}\nkey:  {key}")
    click.echo("The key is shown this once; store it in your secret manager.", err=True)


@api_key.command("list")
def list_keys() -> None:
    """The keys (never their secrets)."""
    keys, _ = _keys()
    for rec in keys.list():
        state = f"revoked {rec.revoked_at:%Y-%m-%d %H:%M}" if rec.revoked_at else "active"
        click.echo(f"{rec.id}  {rec.role:<8}  {state:<24}  {rec.name}")


@api_key.command("revoke")
@click.argument("key_id")
def revoke_key(key_id: str) -> None:
    """Revoke a key at once."""
    from udop.api.audit import AuditLog

    keys, engine = _keys()
    if not keys.revoke(key_id):
        raise click.ClickException(f"no active API key {key_id!r}; see 'udop api-key list'")
    AuditLog(engine).record(
        actor="cli",
        actor_kind="cli",
        role=None,
        action="revoke_api_key",
        method="CLI",
        path="udop api-key revoke",
        status=204,
        detail=f"api key {key_id} revoked",
    )
    click.echo(f"revoked {key_id}")


def _keys() -> tuple[ApiKeys, Engine]:
    from udop.api.audit import ensure_api_tables
    from udop.api.keys import ApiKeys
    from udop.api.settings import load_api_settings
    from udop.store import open_store

    try:
        settings = load_api_settings()
        if settings.database_url is None:  # the embedded default under UDOP_HOME: ours to create
            settings.home.mkdir(parents=True, exist_ok=True)
        store = open_store(settings.resolved_database_url)
        engine = store.engine
        ensure_api_tables(engine)
    except UdopError as exc:
        raise click.ClickException(str(exc)) from None
    return ApiKeys(engine), engine
