"""``schedule:`` is checked when a definition loads, ticks follow the time zone through DST, and one
function turns a schedule into EventBridge Scheduler's six-field expression."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import islice
from pathlib import Path

import pytest
from pydantic import ValidationError

from udop.cli import main
from udop.schedule.expr import eventbridge_expression, fires_between, next_fire
from udop.spec.models import Schedule


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"cron": "99 99 * * *"}, "minute 99 is out of range 0-59"),
        ({"cron": "0 24 * * *"}, "hour 24 is out of range 0-23"),
        ({"cron": "0 6 32 * *"}, "day of month 32 is out of range 1-31"),
        ({"cron": "0 6 * 13 *"}, "month 13 is out of range 1-12"),
        ({"cron": "0 6 * * 8"}, "day of week 8 is out of range 0-7"),
        ({"cron": "0 6 * *"}, "must have five fields"),
        ({"cron": "0 6 * * FOO"}, "cron '0 6 \\* \\* FOO': bad day"),
        ({"cron": "0 6 1 * 1"}, "cannot restrict both the day of the month"),
        ({"cron": "0 6 * * *", "timezone": "Mars/Olympus"}, "'Mars/Olympus' is not a known IANA time zone"),
        ({"cron": "0 6 * * *", "timezone": "../../etc/passwd"}, "is not a known IANA time zone"),
        ({"rate": "0 minutes"}, "must be at least 1 minute"),
        ({"rate": "5 weeks"}, "must look like"),
    ],
)
def test_bad_schedules_are_refused_with_what_is_wrong(fields: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Schedule(**fields)


def test_udop_validate_names_the_file_and_line_of_a_bad_schedule(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "apiVersion: udop/v1\nkind: Pipeline\nmetadata: {name: p}\nspec:\n"
        '  schedule: {cron: "0 6 * * *", timezone: "Mars/Olympus"}\n'
        '  tasks: [{id: a, type: python, callable: "os:getcwd"}]\n'
    )
    with pytest.raises(SystemExit) as exit_:
        main(["validate", str(path)])
    assert exit_.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{path}:5: spec.schedule: timezone 'Mars/Olympus' is not a known IANA time zone; use a "
                   "name such as 'UTC', 'Europe/Paris' or 'America/New_York'"]


@pytest.mark.parametrize(
    ("cron", "expected"),
    [
        ("0 6 * * *", "cron(0 6 * * ? *)"),
        ("30 2 * * 1-5", "cron(30 2 ? * 2-6 *)"),
        ("0 0 * * 0,6", "cron(0 0 ? * 1,7 *)"),
        ("0 0 * * 7", "cron(0 0 ? * 1 *)"),
        # the second Monday: the day moves (1 -> 2), the "second" does not
        ("0 6 * * 1#2", "cron(0 6 ? * 2#2 *)"),
        ("0 6 * * 5L", "cron(0 6 ? * 6L *)"),
        ("0 6 L * *", "cron(0 6 L * ? *)"),
        ("*/15 * * * MON-FRI", "cron(*/15 * ? * MON-FRI *)"),
    ],
)
def test_eventbridge_expression(cron: str, expected: str) -> None:
    assert eventbridge_expression(Schedule(cron=cron)) == expected


def _utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def test_a_daily_cron_follows_its_zone_through_both_dst_changes() -> None:
    paris = Schedule(cron="30 2 * * *", timezone="Europe/Paris")
    # spring forward (2026-03-29): 02:30 does not exist; it fires once, at 03:00 local (01:00 UTC)
    spring = list(fires_between(paris, _utc(2026, 3, 27, 12), _utc(2026, 3, 30, 12)))
    assert spring == [_utc(2026, 3, 28, 1, 30), _utc(2026, 3, 29, 1, 0), _utc(2026, 3, 30, 0, 30)]
    # fall back (2026-10-25): 02:30 happens twice; it fires once
    # fall back (2026-10-25): 02:30 happens twice; a daily schedule fires once, at the first
    fall = list(fires_between(paris, _utc(2026, 10, 24, 12), _utc(2026, 10, 26, 12)))
    assert fall == [_utc(2026, 10, 25, 0, 30), _utc(2026, 10, 26, 1, 30)]
    # while a schedule every 30 minutes keeps its pace through the repeated hour
    half_hourly = Schedule(cron="*/30 * * * *", timezone="Europe/Paris")
    assert list(fires_between(half_hourly, _utc(2026, 10, 25, 0), _utc(2026, 10, 25, 2))) == [
        _utc(2026, 10, 25, 0, 30), _utc(2026, 10, 25, 1), _utc(2026, 10, 25, 1, 30), _utc(2026, 10, 25, 2)]


def test_rate_ticks_are_aligned_to_the_epoch_and_strictly_after() -> None:
    every_15 = Schedule(rate="15 minutes")
    assert next_fire(every_15, _utc(2026, 1, 1, 10, 7)) == _utc(2026, 1, 1, 10, 15)
    assert next_fire(every_15, _utc(2026, 1, 1, 10, 15)) == _utc(2026, 1, 1, 10, 30)
    assert list(islice(fires_between(Schedule(rate="1 day"), _utc(2026, 1, 1, 0), None), 2)) == [
        _utc(2026, 1, 2), _utc(2026, 1, 3)]


def test_a_file_triggers_parameter_must_be_declared(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "apiVersion: udop/v1\nkind: Pipeline\nmetadata: {name: p}\nspec:\n"
        "  trigger: {files: {path: incoming, param: file}}\n"
        '  tasks: [{id: a, type: python, callable: "os:getcwd"}]\n'
    )
    with pytest.raises(SystemExit):
        main(["validate", str(path)])
    assert "trigger.files.param 'file' is not a declared parameter" in capsys.readouterr().err
