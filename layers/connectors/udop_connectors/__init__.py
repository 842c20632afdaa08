"""Built-in udop connectors."""
