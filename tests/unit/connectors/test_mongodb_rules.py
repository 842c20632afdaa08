"""The mongodb connector's rules that need no server: option checks, the BSON -> Arrow type rules of
an inferred schema, Arrow -> BSON values, and change-stream positions ordering as text."""

from __future__ import annotations

import datetime as dt
import decimal
import sys
import uuid

import pyarrow as pa
import pytest
from bson import Binary, DatetimeMS, Decimal128, Int64, ObjectId, Timestamp

from udop import sandbox
from udop.connectors import get_connector
from udop.errors import ConfigError, ConnectionFailed, FatalError
from udop_connectors.mongodb import _bson, _infer_type, _parse_position, _plain, _position


def test_a_change_stream_is_incremental_on_its_position() -> None:
    c = get_connector({"connector": "mongodb", "database": "d", "collection": "c", "changes": True})
    assert c.settings.incremental is not None and c.settings.incremental.column == "_position"
    c = get_connector(
        {
            "connector": "mongodb",
            "database": "d",
            "collection": "c",
            "changes": True,
            "incremental": {"wait": "5s"},
        }
    )
    assert c.settings.incremental is not None and c.settings.incremental.wait == 5.0
    for bad, says in [
        ({"changes": True, "incremental": {"column": "updated"}}, "always '_position'"),
        ({"changes": True, "filter": {"a": 1}}, "not 'filter'"),
        ({"pipeline": [{"$match": {}}], "filter": {"a": 1}}, "not both"),
    ]:
        with pytest.raises((ConfigError, FatalError, ValueError), match=says):
            get_connector({"connector": "mongodb", "database": "d", "collection": "c", **bad})


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([True, None, False], pa.bool_()),
        ([1, Int64(2), None], pa.int64()),
        ([1, 2.5], pa.float64()),
        ([dt.datetime(2024, 1, 1, tzinfo=dt.UTC)], pa.timestamp("ms", "UTC")),
        ([Timestamp(1_700_000_000, 1)], pa.timestamp("ms", "UTC")),
        ([Decimal128("1.5"), Decimal128("2.125")], pa.decimal128(38, 3)),
        ([Decimal128("1E-30")], pa.string()),
        ([ObjectId()], pa.string()),
        ([b"\x00\x01"], pa.binary()),
        ([{"a": 1}], pa.string()),
        ([[1, 2]], pa.string()),
        ([1, "x"], pa.string()),
        ([None, None], pa.string()),
        ([DatetimeMS(253_402_300_800_000 * 2)], pa.string()),  # past year 9999: its milliseconds
    ],
)
def test_the_first_batch_decides_a_fields_type(values: list[object], expected: pa.DataType) -> None:
    assert _infer_type([_plain(v) for v in values]) == expected


def test_bson_values_as_plain_values() -> None:
    oid = ObjectId()
    u = uuid.uuid4()
    assert _plain(oid) == str(oid)
    assert _plain(Binary.from_uuid(u)) == str(u)
    assert _plain({"ref": oid, "at": dt.datetime(2024, 1, 2, tzinfo=dt.UTC)}) == (
        f'{{"ref": {{"$oid": "{oid}"}}, "at": {{"$date": "2024-01-02T00:00:00Z"}}}}'
    )


def test_arrow_values_as_bson() -> None:
    assert _bson(dt.date(2024, 3, 4)) == dt.datetime(2024, 3, 4, tzinfo=dt.UTC)
    assert _bson(decimal.Decimal("1.50")) == Decimal128("1.50")
    assert _bson({"xs": [decimal.Decimal("1")], "t": dt.time(1, 2)}) == {
        "xs": [Decimal128("1")],
        "t": "01:02:00",
    }


def test_positions_compare_as_text_in_stream_order() -> None:
    token = {"_data": "ff00"}
    ordered = [
        _position(9, 5, 0, {"_data": "zz"}),
        _position(10, 1, 0, token),
        _position(10, 1, 1, {"_data": "00"}),  # the next change of one transaction
        _position(10, 2, 0, token),
        _position(1_796_039_734, 13, 0, token),
    ]
    assert sorted(ordered) == ordered
    assert _parse_position(ordered[2]) == (10, 1, 1, {"_data": "00"})
    assert _parse_position("2024-01-01T00:00:00") is None


def test_an_unreachable_server_is_retryable_and_a_bad_url_is_not() -> None:
    spec = {"connector": "mongodb", "url": "mongodb://u:pw-777@127.0.0.1:1/db", "connect_timeout": 0.3}
    with pytest.raises(ConnectionFailed) as err, get_connector(spec) as c:
        c.check()
    assert "cannot reach MongoDB" in str(err.value) and "pw-777" not in str(err.value)
    # a typo in a URL option (pymongo would only warn) and a malformed port
    for url in ("mongodb://u:pw-888@host/db?notAnOption=1", "mongodb://u:pw-888@host:port/db"):
        with (
            pytest.raises(FatalError, match="bad connection settings") as err2,
            get_connector({"connector": "mongodb", "url": url}) as c,
        ):
            c.check()
        assert "pw-888" not in str(err2.value) and "\n" not in str(err2.value)


@pytest.mark.parametrize(
    "query",
    [
        "tlsCAFile=/etc/ssl/ca.pem",
        "tls=true&tlsCertificateKeyFile=/root/key.pem",
        "authMechanism=MONGODB-AWS",
    ],
)
def test_a_server_refuses_urls_that_read_host_files_or_credentials(query: str) -> None:
    url = f"mongodb://db.example:27017/shop?{query}"
    with sandbox.active(sandbox.Policy(mode="server")), pytest.raises(FatalError, match="on a server") as err:
        get_connector({"connector": "mongodb", "url": url, "collection": "c"}).check()
    assert "\n" not in str(err.value)
    # trusted (udop run on your own machine): the same URL is taken as it is
    assert get_connector({"connector": "mongodb", "url": url, "collection": "c"})._url() == url


def test_without_the_driver_the_error_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pymongo", None)  # as where the extra is not installed
    with pytest.raises(FatalError, match=r"pip install 'udop\[mongodb\]'"):
        list(get_connector({"connector": "mongodb", "database": "d", "collection": "c"}).read())


def test_collections_of_one_server_share_its_circuit_breaker() -> None:
    base = {"connector": "mongodb", "host": "db.example", "database": "shop"}
    orders = get_connector({**base, "collection": "orders", "filter": {"a": 1}})
    users = get_connector({**base, "collection": "users", "pipeline": [{"$match": {}}]})
    other = get_connector({**base, "host": "other.example", "collection": "orders"})
    assert orders.breaker_key() == users.breaker_key() != other.breaker_key()
