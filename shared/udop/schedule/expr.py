"""Schedule expressions: checking ``schedule:`` at load time, next-fire times, and the one conversion
to an EventBridge Scheduler expression that the CDK app, the deployer, ``udop deploy`` and the API use.

A ``cron`` is five fields (minute hour day-of-month month day-of-week) evaluated in the schedule's
time zone by cronsim: a time that does not exist on a spring-forward day fires at the next valid
time, a time that happens twice on a fall-back day fires once. A ``rate`` fires every N units
counted from 1970-01-01 00:00 UTC, so ``15 minutes`` ticks at :00, :15, :30 and :45 everywhere.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "SCHEDULE_NAME_MAX",
    "ScheduleLike",
    "check_cron",
    "check_timezone",
    "eventbridge_expression",
    "fires_between",
    "next_fire",
    "rate_seconds",
    "schedule_name",
    "scheduled_input",
    "zone",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}

# (name, low, high) per field; cronsim checks the syntax, this gives the range message
_FIELDS = (
    ("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7),
)


class ScheduleLike(Protocol):
    """What ``udop.spec.models.Schedule`` has (kept structural so this module imports no spec)."""

    @property
    def cron(self) -> str | None: ...
    @property
    def rate(self) -> str | None: ...
    @property
    def timezone(self) -> str: ...


def check_timezone(name: str) -> ZoneInfo:
    """The IANA zone ``name``; ``ValueError`` with what to write instead when there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"timezone {name!r} is not a known IANA time zone; use a name such as 'UTC', "
            "'Europe/Paris' or 'America/New_York'"
        ) from None


def zone(schedule: ScheduleLike) -> ZoneInfo:
    return check_timezone(schedule.timezone)


def _numbers(field: str) -> Iterator[int]:
    """The plain numbers written in one cron field (ranges' ends, list items, step bases)."""
    for part in field.split(","):
        base = part.split("/")[0]
        for end in base.split("-"):
            if end.isdigit():
                yield int(end)


def check_cron(cron: str) -> None:
    """Refuse (``ValueError``, one line) a cron that cronsim or EventBridge Scheduler cannot run."""
    from cronsim import CronSim, CronSimError

    fields = cron.split()
    if len(fields) != 5:
        raise ValueError(f"cron {cron!r} must have five fields (minute hour day-of-month month day-of-week)")
    for text, (what, low, high) in zip(fields, _FIELDS, strict=True):
        for number in _numbers(text.split("#")[0].rstrip("LW")):
            if not low <= number <= high:
                raise ValueError(f"cron {cron!r}: {what} {number} is out of range {low}-{high}")
    dom, dow = fields[2], fields[4]
    if dom not in ("*", "?") and dow not in ("*", "?"):
        raise ValueError(
            f"cron {cron!r}: EventBridge Scheduler cannot restrict both the day of the month ({dom}) "
            f"and the day of the week ({dow}); write '*' in one of them"
        )
    try:
        CronSim(cron.replace("?", "*"), datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise ValueError(f"cron {cron!r}: {str(exc).lower()}; see `man 5 crontab`") from None


def rate_seconds(rate: str) -> int:
    value, unit = rate.split()
    seconds = int(value) * _UNIT_SECONDS[unit.rstrip("s")]
    if seconds <= 0:
        raise ValueError(f"rate {rate!r} must be at least 1 {unit.rstrip('s')}")
    return seconds


def next_fire(schedule: ScheduleLike, after: datetime) -> datetime:
    """The first tick strictly after ``after`` (aware), in UTC."""
    return next(fires_between(schedule, after, None))


def fires_between(schedule: ScheduleLike, after: datetime, until: datetime | None) -> Iterator[datetime]:
    """Ticks (UTC) strictly after ``after`` and at or before ``until`` (``None``: without end)."""
    if after.tzinfo is None:
        raise ValueError("fires_between needs an aware datetime")
    if schedule.rate is not None:
        step = rate_seconds(schedule.rate)
        elapsed = int((after - _EPOCH).total_seconds())
        tick = _EPOCH + timedelta(seconds=(elapsed // step + 1) * step)
        while until is None or tick <= until:
            yield tick
            tick += timedelta(seconds=step)
        return
    from cronsim import CronSim

    assert schedule.cron is not None
    # cronsim starts strictly after the given time, in the zone the time carries
    for tick in CronSim(schedule.cron.replace("?", "*"), after.astimezone(zone(schedule))):
        tick_utc = tick.astimezone(UTC)
        if until is not None and tick_utc > until:
            return
        yield tick_utc


# --- EventBridge Scheduler -------------------------------------------------------------------------


def _eventbridge_dow(field: str) -> str:
    """Day of week: cron numbers 0-6 (7 = Sunday too) from Sunday, EventBridge 1-7 from Sunday.

    Only a day's number moves: in ``1#2`` (the second Monday) the ``2`` stays, in ``5L`` the ``L``.
    """

    def day(match: re.Match[str]) -> str:
        return str(int(match.group(0)) % 7 + 1)

    out = []
    for part in field.split(","):
        if "#" in part:
            number, nth = part.split("#", 1)
            out.append(re.sub(r"\d+", day, number) + "#" + nth)
        else:
            base, _, step = part.partition("/")
            out.append(re.sub(r"\d+", day, base) + (f"/{step}" if step else ""))
    return ",".join(out)


def eventbridge_expression(schedule: ScheduleLike) -> str:
    """``schedule`` -> an EventBridge Scheduler expression: ``rate(...)`` or the six-field ``cron(...)``
    (minute hour day-of-month month day-of-week year, '?' in one day field, days 1-7 from Sunday)."""
    if schedule.rate is not None:
        value, unit = schedule.rate.split()
        unit = unit.rstrip("s") + ("" if int(value) == 1 else "s")
        return f"rate({value} {unit})"
    assert schedule.cron is not None
    check_cron(schedule.cron)  # raises for a day-of-month AND day-of-week combination
    minute, hour, dom, month, dow = schedule.cron.split()
    if dow in ("*", "?"):
        dow = "?"
    else:
        dom = "?"
        dow = _eventbridge_dow(dow)
    return f"cron({minute} {hour} {dom} {month} {dow} *)"


SCHEDULE_NAME_MAX = 64


def schedule_name(pipeline: str, prefix: str = "udop-") -> str:
    """``udop-<pipeline>``, shortened with a hash when longer than a schedule name may be (64)."""
    name = f"{prefix}{pipeline}"
    if len(name) <= SCHEDULE_NAME_MAX:
        return name
    digest = hashlib.sha256(pipeline.encode()).hexdigest()[:8]
    return f"{name[: SCHEDULE_NAME_MAX - 9]}-{digest}"


def scheduled_input(pipeline: Any, data_bucket: str) -> dict[str, Any]:
    """The execution input of a run EventBridge Scheduler starts: the run context the compiled Task
    states pass on. ``ValueError`` when a required parameter has no default (nothing can supply it)."""
    params = pipeline.spec.params
    missing = [name for name, spec in params.items() if spec.is_required]
    if missing:
        raise ValueError(
            f"pipeline {pipeline.name!r}: a schedule cannot supply required parameter(s) "
            f"{', '.join(missing)}; give them defaults"
        )
    return {
        "run": {
            "run_id": "<aws.scheduler.execution-id>",
            "logical_date": "<aws.scheduler.scheduled-time>",
            "params": {name: spec.default for name, spec in params.items()},
            "data_root": f"s3://{data_bucket}",
            "data_bucket": data_bucket,
            "data_prefix": "",
            "trigger": "schedule",
        }
    }
