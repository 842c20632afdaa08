"""``UDOP_STOP_GRACE``: how long an attempt told to stop (a cancel, a timeout) may take to return before
its run gives it up. A server's runs, ``udop run`` and a scheduler's runs take it from the environment;
a bad value stops the server at start with one line naming the variable."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

SECRET = "test-secret-" + "s" * 40


def test_the_servers_executors_and_udop_runs_take_the_grace_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from udop.api import create_app, load_api_settings
    from udop.executor.local import LocalExecutor
    from udop.settings import get_settings
    from udop.store import open_store

    monkeypatch.setenv("UDOP_STOP_GRACE", "0.5")
    monkeypatch.setenv("UDOP_JWT_SECRET", SECRET)
    monkeypatch.setenv("UDOP_DATA_ROOT", str(tmp_path / "data"))
    get_settings.cache_clear()
    store = open_store(f"sqlite:///{tmp_path / 'meta.db'}")
    app = create_app(load_api_settings(), store=store)
    try:
        launcher = app.state.udop.launcher
        # the executor each triggered run gets (its cancel and the server's stop wait this long)
        assert launcher._executor().stop_grace == 0.5
        # what `udop run`, the scheduler and backfills build: no grace passed, the setting's
        assert LocalExecutor(store).stop_grace == 0.5
    finally:
        app.state.udop.launcher.close()
        store.close()


def test_the_default_grace_is_ten_seconds(tmp_path: Path) -> None:
    from udop.executor.local import LocalExecutor
    from udop.store import open_store

    store = open_store(f"sqlite:///{tmp_path / 'meta.db'}")
    try:
        assert LocalExecutor(store, data_root=str(tmp_path / "d")).stop_grace == 10.0
        assert LocalExecutor(store, data_root=str(tmp_path / "d"), stop_grace=2).stop_grace == 2
    finally:
        store.close()


@pytest.mark.parametrize(("value", "why"), [("0", "greater than 0"), ("-1", "greater than 0"),
                                            ("soon", "valid number")])
def test_a_bad_grace_stops_the_server_at_start_with_one_line(
    value: str, why: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from udop.cli import cli

    monkeypatch.setenv("UDOP_STOP_GRACE", value)
    monkeypatch.setenv("UDOP_JWT_SECRET", SECRET)
    # a port already taken: a server that started anyway would fail on it rather than serve forever
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = CliRunner().invoke(cli, ["serve", "--host", "127.0.0.1", "--port", str(taken.getsockname()[1])])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "UDOP_STOP_GRACE" in lines[0] and why in lines[0], lines[0]
