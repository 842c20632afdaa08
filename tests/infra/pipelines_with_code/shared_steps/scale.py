"""Fixture: a module of a package beside the definition."""


def doubled(context, inputs):
    return [2 * v for v in inputs["numbers"]]
