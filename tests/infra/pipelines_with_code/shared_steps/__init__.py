"""Fixture: a package beside the definition."""
