"""Dataset names (OpenLineage's scheme, no secrets) and column lineage of step SQL."""

from __future__ import annotations

import pytest

from udop.connectors import get_connector
from udop.lineage import Dataset, dataset_uri
from udop.lineage.columns import column_lineage, compose


@pytest.mark.parametrize(("spec", "uri"), [
    ({"connector": "postgres", "host": "db.example", "database": "shop", "schema": "sales", "table": "orders",
      "password": "hunter2"}, "postgres://db.example:5432/shop.sales.orders"),
    ({"connector": "postgres", "url": "postgresql://u:hunter2@db.example/shop?sslmode=require", "table": "o"},
     "postgres://db.example:5432/shop.public.o"),
    ({"connector": "mariadb", "url": "mariadb://root:hunter2@127.0.0.1:3307/shop", "table": "orders"},
     "mysql://127.0.0.1:3307/shop.orders"),
    ({"connector": "mysql", "host": "127.0.0.1", "database": "shop", "table": "orders"},
     "mysql://127.0.0.1:3306/shop.orders"),
    ({"connector": "s3", "path": "s3://lake/raw/2024/*.parquet"}, "s3://lake/raw/2024"),
    ({"connector": "s3", "path": "s3://lake/marts/out/"}, "s3://lake/marts/out"),
    ({"connector": "local", "path": "/srv/out/data"}, "file:///srv/out/data"),
    ({"connector": "gcs", "path": "gs://b/p/x"}, "gs://b/p/x"),
    ({"connector": "http", "url": "https://user:hunter2@api.example.com/v1/items?api_key=hunter2#x"},
     "https://api.example.com/v1/items"),
    ({"connector": "graphql", "url": "https://api.example.com/graphql", "query": "{a}"},
     "https://api.example.com/graphql"),
    ({"connector": "redis", "kind": "stream", "stream": "events"}, "redis://127.0.0.1:6379/0/events"),
    ({"connector": "redis", "url": "redis://:hunter2@cache:6380/2", "pattern": "user:*"},
     "redis://cache:6380/2/user:*"),
    ({"connector": "rabbitmq", "queue": "jobs"}, "rabbitmq://127.0.0.1:5672/jobs"),
    ({"connector": "rabbitmq", "url": "amqp://guest:hunter2@mq.example/vh", "queue": "jobs"},
     "rabbitmq://mq.example:5672/jobs"),
    ({"connector": "mongodb", "database": "shop", "collection": "orders"}, "mongodb://127.0.0.1:27017/shop.orders"),
    ({"connector": "mongodb", "url": "mongodb://u:hunter2@db.example/shop?authSource=admin", "collection": "o"},
     "mongodb://db.example:27017/shop.o"),
])
def test_every_connector_names_its_dataset_without_secrets(spec: dict[str, object], uri: str) -> None:
    found = get_connector(spec).lineage_dataset()
    assert found.uri == uri
    assert "hunter2" not in found.uri
    assert Dataset.parse(found.uri) == found  # the stored string splits back into namespace + name


def test_sqlite_and_paths_are_absolute_file_names(tmp_path: object) -> None:
    found = get_connector({"connector": "sqlite", "database": "/data/x.db", "table": "t"}).lineage_dataset()
    assert (found.namespace, found.name) == ("sqlite", "/data/x.db.t")
    assert dataset_uri("/run/.udop/data/r1/totals") == "file:///run/.udop/data/r1/totals"
    assert Dataset.parse("s3://lake/raw/x") == Dataset("s3://lake", "raw/x")


def test_column_lineage_follows_stars_joins_and_derived_columns() -> None:
    sql = ('WITH s1 AS (SELECT *, amount * 2 AS doubled FROM "orders"), '
           's2 AS (SELECT s1.id, region, doubled FROM s1 JOIN regions r USING (region)) SELECT * FROM s2')
    found = column_lineage(sql, {"orders": ["id", "region", "amount"], "regions": ["region", "name"]})
    assert found == {"id": [("orders", "id")], "region": [("orders", "region"), ("regions", "region")],
                     "doubled": [("orders", "amount")]}


def test_column_lineage_through_a_check_table_reaches_the_inputs() -> None:
    first = column_lineage('SELECT amount + tax AS gross, id FROM "orders"', {"orders": ["id", "amount", "tax"]})
    later = column_lineage('SELECT gross * 2 AS g2 FROM "_check_0"', {"_check_0": ["gross", "id"]})
    assert compose(later, {"_check_0": first}) == {"g2": [("orders", "amount"), ("orders", "tax")]}


def test_sql_it_cannot_follow_gives_no_lineage_rather_than_an_error() -> None:
    assert column_lineage("SELECT FROM WHERE (", {"t": ["a"]}) == {}
