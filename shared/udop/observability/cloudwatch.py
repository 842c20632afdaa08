"""Task logs on AWS: the task runner's lines of one attempt are in its function's CloudWatch log
stream; the attempt's record in the store points at them (log group, stream, Lambda request id).

``pointer()`` is what the runner records (from the Lambda environment and its request id);
``render_pointer()`` is what ``udop logs`` and the API show: the pointer, and the request's lines
when CloudWatch Logs can be read from here (boto3 and credentials), else the pointer alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from udop.settings import ProcessSettings, load_settings

__all__ = ["pointer", "render_pointer"]

#: events read per attempt at most (a page of filter_log_events is up to 10,000)
MAX_EVENTS = 2000


def pointer(request_id: str | None) -> dict[str, Any] | None:
    """Where this Lambda invocation's lines go; None outside Lambda (no log group in the environment)."""
    process = load_settings(ProcessSettings)
    group, stream = process.lambda_log_group_name, process.lambda_log_stream_name
    if not group or not stream:
        return None
    found: dict[str, Any] = {"kind": "cloudwatch", "log_group": group, "log_stream": stream}
    if request_id:
        found["request_id"] = request_id
    if region := process.aws_region:
        found["region"] = region
    return found


def render_pointer(log: Mapping[str, Any], *, limit: int | None = None, fetch: bool = True,
                   client: Any = None) -> str:
    """The pointer as a header line, then the invocation's lines (those carrying its request id)."""
    from udop.sandbox import redactor

    head = (f"[CloudWatch log group {log.get('log_group')} stream {log.get('log_stream')}"
            + (f" request {log['request_id']}" if log.get("request_id") else "") + "]\n")
    if not fetch:
        return head
    try:
        lines = _fetch(log, client)
    except Exception as exc:  # no boto3, no credentials, no permission: the pointer still helps
        return head + f"[udop: cannot read CloudWatch Logs from here: {type(exc).__name__}]\n"
    text = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
    if limit is not None:
        text = text[:limit]
    return head + redactor.redact(text)


def _fetch(log: Mapping[str, Any], client: Any) -> list[str]:
    if client is None:
        import boto3

        client = boto3.client("logs", **({"region_name": log["region"]} if log.get("region") else {}))
    request_id = str(log.get("request_id") or "")
    kwargs: dict[str, Any] = {"logGroupName": log["log_group"], "logStreamNames": [log["log_stream"]]}
    out: list[str] = []
    while len(out) < MAX_EVENTS:
        page = client.filter_log_events(**kwargs)
        for event in page.get("events", []):
            message = str(event.get("message", ""))
            if not request_id or _of_request(message, request_id):
                out.append(message)
        token = page.get("nextToken")
        if not token or token == kwargs.get("nextToken"):
            break
        kwargs["nextToken"] = token
    return out[:MAX_EVENTS]


def _of_request(message: str, request_id: str) -> bool:
    """A line of the invocation: udop's and Powertools' JSON lines carry its request id, and so do
    the runtime's ``START/END/REPORT RequestId: ...`` lines."""
    return request_id in message
