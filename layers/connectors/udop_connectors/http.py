"""HTTP connectors: ``http`` (REST: page-number, offset, cursor and Link-header pagination; bearer,
basic and API-key auth; retries with backoff on 5xx/429 honouring Retry-After; a JSON path to the
records) and ``graphql`` (cursor pagination through ``pageInfo``)."""

from __future__ import annotations

import email.utils
import json
import random
import time
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from udop.connectors import Connector, ConnectorSettings, Secret
from udop.connectors.base import WriteMode
from udop.lineage.naming import Dataset, url_dataset
from udop.observability.tracing import outgoing_headers, span
from udop.spec.types import Duration
from udop_connectors._arrow import ColumnTypes, records_to_batch, schema_from_mapping

__all__ = ["GraphQLConnector", "HttpConnector", "HttpSettings"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Auth(_Model):
    type: Literal["bearer", "basic", "api_key"]
    token: Secret | None = Field(None, description="bearer")
    username: str | None = Field(None, description="basic")
    password: Secret | None = Field(None, description="basic")
    name: str = Field("X-API-Key", description="api_key: header or query parameter name")
    value: Secret | None = Field(None, description="api_key")
    location: Literal["header", "query"] = Field("header", alias="in", description="api_key: where it goes")


class Pagination(_Model):
    type: Literal["none", "page", "offset", "cursor", "link"] = "none"
    page_param: str = "page"
    start_page: int = 1
    offset_param: str = "offset"
    limit_param: str = "limit"
    size_param: str | None = Field(None, description="page: parameter carrying page_size, if any")
    page_size: int = Field(100, ge=1)
    cursor_param: str = "cursor"
    cursor_path: str = Field("next_cursor", description="cursor: JSON path to the next cursor in a response")
    max_pages: int = Field(100_000, ge=1, description="a safety stop")


class Retry(_Model):
    attempts: int = Field(5, ge=1, description="tries per request, the first included")
    base_delay: Duration = 0.5
    max_delay: Duration = 30.0


class HttpSettings(ConnectorSettings):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    url: str
    method: Literal["GET", "POST"] = "GET"
    params: dict[str, Any] = Field(default_factory=dict, description="query parameters")
    headers: dict[str, str] = Field(default_factory=dict)
    body: dict[str, Any] | None = Field(None, description="JSON body (POST)")
    auth: Auth | None = None
    records: str | None = Field(None, description="JSON path to the list of records, e.g. data.items")
    pagination: Pagination = Pagination()
    retry: Retry = Retry()
    timeout: Duration = 30.0
    columns: ColumnTypes = Field(None, description="column -> type; other fields are dropped")
    incremental_param: str | None = Field(None, description="query parameter that gets the watermark")
    write_batch: int = Field(500, ge=1, description="records per POST when writing")


def json_path(data: Any, path: str | None) -> Any:
    """``a.b.0.c`` (a leading ``$.`` is allowed) into parsed JSON; None when absent."""
    if not path or path in ("$", "."):
        return data
    for part in path.removeprefix("$.").split("."):
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and part.lstrip("-").isdigit():
            idx = int(part)
            data = data[idx] if -len(data) <= idx < len(data) else None
        else:
            return None
    return data


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time()) if when else None


class HttpConnector(Connector):
    name = "http"
    Settings: ClassVar[type[ConnectorSettings]] = HttpSettings
    write_modes: ClassVar[tuple[str, ...]] = ("append",)

    settings: HttpSettings

    def dataset(self) -> Dataset:
        # the URL without user info or query string: an API key in ?key=... is not a name
        return url_dataset(self.settings.url)

    def __init__(self, settings: ConnectorSettings, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import httpx

            headers = dict(self.settings.headers)
            auth = None
            a = self.settings.auth
            if a is not None:
                if a.type == "bearer":
                    headers["Authorization"] = f"Bearer {self.secret(a.token)}"
                elif a.type == "basic":
                    auth = httpx.BasicAuth(a.username or "", self.secret(a.password) or "")
                elif a.location == "header":
                    headers[a.name] = self.secret(a.value) or ""
            self._client = httpx.Client(
                headers=headers, auth=auth, timeout=self.settings.timeout, follow_redirects=True
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _auth_params(self) -> dict[str, Any]:
        a = self.settings.auth
        if a is not None and a.type == "api_key" and a.location == "query":
            return {a.name: self.secret(a.value)}
        return {}

    # -- one request, with retries -----------------------------------------------------------------
    def request(
        self, method: str, url: str, *, params: dict[str, Any] | None = None, json_body: Any = None
    ) -> Any:
        """Send with retries; the parsed JSON of a 2xx response (None when empty)."""
        return self._json(
            self.send(method, url, params=params, json_body=json_body), method, url.split("?", maxsplit=1)[0]
        )

    def send(
        self, method: str, url: str, *, params: dict[str, Any] | None = None, json_body: Any = None
    ) -> Any:
        import httpx

        r = self.settings.retry
        shown = url.split("?", maxsplit=1)[0]
        for attempt in range(1, r.attempts + 1):
            wait = min(r.max_delay, r.base_delay * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            try:
                query = {**self._auth_params(), **(params or {})}
                target = httpx.URL(url)
                if query and target.query:  # httpx would drop the URL's own query (a Link's next page)
                    query = {**dict(target.params), **query}
                    target = target.copy_with(query=None)
                # the run's correlation id and W3C traceparent go along, so the server's logs join ours
                with span(f"HTTP {method}", {"http.request.method": method, "url.full": shown}):
                    response = self.client.request(method, target, params=query or None, json=json_body,
                                                   headers=outgoing_headers())
            except httpx.TransportError as exc:
                if attempt == r.attempts:
                    self.fail(
                        f"{method} {shown}: cannot reach the server ({type(exc).__name__}) after "
                        f"{attempt} attempts",
                        retryable=True,
                    )
                time.sleep(wait)
                continue
            status = response.status_code
            if status == 429 or status >= 500:
                if attempt == r.attempts:
                    self.fail(f"{method} {shown}: HTTP {status} after {attempt} attempts", retryable=True)
                told = _retry_after(response.headers.get("Retry-After"))
                time.sleep(min(r.max_delay, told) if told is not None else wait)
                continue
            if status >= 400:
                hint = {
                    401: " (check the credentials)",
                    403: " (the credentials lack permission)",
                    404: " (check the URL)",
                }.get(status, "")
                self.fail(f"{method} {shown}: HTTP {status} {response.reason_phrase}{hint}", retryable=False)
            return response
        raise AssertionError("unreachable")

    def _json(self, response: Any, method: str, shown: str) -> Any:
        if response.status_code == 204 or not response.content:
            return None
        kind = response.headers.get("content-type", "").split(";")[0].strip() or "no content type"
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            start = " ".join(response.text[:60].split())
            self.fail(
                f"{method} {shown} returned {kind}, not JSON (it starts with {start!r}); "
                "check the URL and the credentials",
                retryable=False,
            )

    # -- read --------------------------------------------------------------------------------------
    def schema(self) -> pa.Schema | None:
        return schema_from_mapping(self.settings.columns)

    def _records(self, data: Any, shown: str) -> list[dict[str, Any]]:
        records = json_path(data, self.settings.records)
        if records is None:
            if self.settings.records:
                return []
            self.fail(
                f"{shown}: the response is not a list; set 'records' to the JSON path of the list",
                retryable=False,
            )
        if isinstance(records, dict):
            records = [records]
        if not isinstance(records, list):
            self.fail(f"{shown}: {self.settings.records or 'the response'} is not a list", retryable=False)
        return [r if isinstance(r, dict) else {"value": r} for r in records]

    def pages(self, since: Any = None) -> Iterator[list[dict[str, Any]]]:
        s, p = self.settings, self.settings.pagination
        params = dict(s.params)
        if s.incremental_param and since is not None:
            params[s.incremental_param] = since.isoformat() if hasattr(since, "isoformat") else since
        url: str | None = s.url
        page, offset, cursor = p.start_page, 0, None
        for _ in range(p.max_pages):
            q = dict(params)
            if p.type == "page":
                q[p.page_param] = page
                if p.size_param:
                    q[p.size_param] = p.page_size
            elif p.type == "offset":
                q[p.offset_param], q[p.limit_param] = offset, p.page_size
            elif p.type == "cursor" and cursor is not None:
                q[p.cursor_param] = cursor
            assert url is not None
            if p.type == "link" and url != s.url:
                q = {}  # the next link carries its own query
            data, links = self._get(url, q)
            records = self._records(data, url.split("?")[0])
            yield records
            if p.type == "none":
                return
            if p.type == "page":
                if not records or (p.size_param and len(records) < p.page_size):
                    return
                page += 1
            elif p.type == "offset":
                if len(records) < p.page_size:
                    return
                offset += len(records)
            elif p.type == "cursor":
                cursor = json_path(data, p.cursor_path)
                if not cursor or not records:
                    return
            else:
                url = links.get("next", {}).get("url")
                if not url:
                    return

    def _get(self, url: str, params: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        response = self.send(self.settings.method, url, params=params, json_body=self.settings.body)
        return self._json(response, self.settings.method, url.split("?", maxsplit=1)[0]), dict(response.links)

    def read(self, *, since: Any = None) -> Iterator[pa.RecordBatch]:
        typed = self.schema()
        for records in self.pages(since):
            if records:
                yield records_to_batch(records, typed)

    def check(self) -> None:
        next(iter(self.pages()), None)

    # -- write -------------------------------------------------------------------------------------
    def write(
        self, batches: Iterable[pa.RecordBatch], mode: WriteMode | None = None, keys: list[str] | None = None
    ) -> int:
        """POST the records as JSON arrays of ``write_batch`` records. Not transactional: an API
        cannot roll back, so a failed load may have delivered some requests."""
        self.resolve_mode(mode, keys)
        total = 0
        for batch in batches:
            rows = batch.to_pylist()
            for start in range(0, len(rows), self.settings.write_batch):
                chunk = rows[start : start + self.settings.write_batch]
                self.request(
                    "POST",
                    self.settings.url,
                    params=self.settings.params,
                    json_body=json.loads(json.dumps(chunk, default=str)),
                )
                total += len(chunk)
        return total


class GraphQLSettings(HttpSettings):
    query: str = Field(description="the GraphQL document")
    variables: dict[str, Any] = Field(default_factory=dict)
    page_info: str | None = Field(None, description="JSON path to pageInfo {hasNextPage, endCursor}")
    cursor_variable: str = Field("after", description="variable that takes endCursor")
    method: Literal["GET", "POST"] = "POST"


class GraphQLConnector(HttpConnector):
    name = "graphql"
    Settings: ClassVar[type[ConnectorSettings]] = GraphQLSettings
    write_modes = ()

    settings: GraphQLSettings

    def pages(self, since: Any = None) -> Iterator[list[dict[str, Any]]]:
        s = self.settings
        variables = dict(s.variables)
        for _ in range(s.pagination.max_pages):
            data = self.request(
                "POST", s.url, params=s.params, json_body={"query": s.query, "variables": variables}
            )
            if isinstance(data, dict) and data.get("errors"):
                first = data["errors"][0]
                message = first.get("message", first) if isinstance(first, dict) else first
                self.fail(f"GraphQL error: {message}", retryable=False)
            yield self._records(data, s.url)
            info = json_path(data, s.page_info) if s.page_info else None
            if not isinstance(info, dict) or not info.get("hasNextPage") or not info.get("endCursor"):
                return
            variables[s.cursor_variable] = info["endCursor"]

    def write(
        self, batches: Iterable[pa.RecordBatch], mode: WriteMode | None = None, keys: list[str] | None = None
    ) -> int:
        self.fail("the graphql connector reads only", retryable=False)
