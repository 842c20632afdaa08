"""Fixture: a module beside the definition, imported by the task runner from UDOP_CODE_DIR."""


def numbers(context, inputs, n):
    return list(range(1, n + 1))
