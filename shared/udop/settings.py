"""Settings read from the environment (prefix ``UDOP_``), validated once at start.

A Lambda with a missing or malformed variable fails at cold start naming the variable, not at the
first request. Locally everything has a default under ``.udop/`` in the working directory.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from udop.errors import ConfigError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UDOP_", frozen=True, extra="ignore")

    home: Path = Field(Path(".udop"), description="local working folder (metadata, data, state)")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///<home>/udop.db")
    data_root: str | None = Field(None, description="where datasets go; default <home>/data; s3://... on AWS")
    state_url: str | None = Field(
        None, description="redis://... for the state store; default SQLite in <home>"
    )
    duckdb_memory_limit: str | None = Field(None, description="e.g. '2GB'; DuckDB spills beyond it")
    duckdb_threads: int | None = Field(None, ge=1)
    fuse: bool = Field(True, description="run a transform inside the file load that alone reads it")

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'udop.db').as_posix()}"

    @property
    def resolved_data_root(self) -> str:
        return self.data_root or str((self.home / "data").absolute())


@cache
def get_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        err = exc.errors()[0]
        name = "UDOP_" + str(err["loc"][0]).upper() if err["loc"] else "UDOP_*"
        raise ConfigError(f"environment variable {name}: {err['msg']}") from None
