"""Lineage: dataset identities in OpenLineage's naming scheme, column lineage, lineage queries.

A dataset is ``namespace`` + ``name`` as OpenLineage names it (``postgres://host:5432`` +
``db.schema.table``, ``s3://bucket`` + ``prefix``, ``file`` + ``/abs/path``). The store keeps one
string per dataset, its URI: ``namespace/name`` (``file:///abs/path`` for ``file``), which
``Dataset.parse`` splits back. Names never carry credentials: user info, query strings and
fragments are dropped from every URL (a query string is where API keys travel).
"""

from udop.lineage.naming import Dataset, dataset_uri, file_dataset, url_dataset

__all__ = ["Dataset", "dataset_uri", "file_dataset", "url_dataset"]
