"""Executors: the LocalExecutor runs a pipeline on this machine (Step Functions is the other one)."""
