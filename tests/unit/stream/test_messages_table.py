"""A JSON message body spread over lines (pretty-printed) is parsed like a one-line one: the batch's
bodies are joined one per line for Arrow's JSON reader, so its newlines (whitespace between JSON tokens;
a string cannot hold a raw one) are blanked first, not the message dropped."""

from __future__ import annotations

from udop_connectors._arrow import messages_table


def test_a_pretty_printed_json_message_keeps_its_fields() -> None:
    table = messages_table([b'{"id": 2, "name": "b"}', b'{\n  "id": 1,\r\n  "name": "a"\n}\n'], {}, "json")
    assert table.to_pylist() == [{"id": 2, "name": "b"}, {"id": 1, "name": "a"}]


def test_a_pretty_printed_first_message_keeps_its_fields() -> None:
    table = messages_table([b'{\n "id": 1\n}', b'{"id": 2}'], {}, "json")
    assert table.to_pylist() == [{"id": 1}, {"id": 2}]
