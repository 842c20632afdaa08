"""The metadata store: pipelines, versions, runs, task runs, attempts, lineage, check results."""
