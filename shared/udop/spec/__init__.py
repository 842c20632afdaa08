"""Pipeline spec v1: models, loader, DAG checks, parameters."""

from udop.spec import models as models  # import first: data_tasks builds on it (a cycle otherwise)
