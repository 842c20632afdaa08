"""udop transform steps and data-quality checks (DuckDB over Arrow)."""
