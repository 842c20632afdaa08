"""The one redactor: every secret value resolved in this process and the registered rules, applied to
text before a user sees it. A leaf (``udop.sandbox`` and ``udop.masking`` build on it)."""

from __future__ import annotations

import contextvars
import itertools
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MASK", "Redactor", "Rule", "looks_secret_name", "redactor"]

MASK = "**********"
#: words of setting and variable names that hold secrets
_SECRET_WORDS = frozenset({"password", "passwd", "pwd", "passphrase", "secret", "token", "credential",
                           "credentials", "apikey", "authorization"})
#: ``token_url``, ``password_file``, ``secret_name``: where a secret is, not the secret
_NOT_SECRET_LAST = frozenset({"url", "uri", "endpoint", "path", "file", "type", "name", "header", "field",
                              "arn", "id", "env"})
_SECRET_PAIRS = frozenset({"apikey", "privatekey", "accesskey", "secretkey", "clientsecret"})


def looks_secret_name(name: str) -> bool:
    """Whether a setting or variable of this name holds a secret (``password``, ``api_key``,
    ``AWS_SECRET_ACCESS_KEY``, ``PGPASSWORD``); ``author`` or ``keys`` do not."""
    words = [w for w in re.split(r"[^a-z0-9]+", re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()) if w]
    if words and words[-1] in _NOT_SECRET_LAST:
        return False
    if any(w in _SECRET_WORDS or w.endswith("password") for w in words):
        return True
    return any(a + b in _SECRET_PAIRS for a, b in itertools.pairwise(words))


Rule = Callable[[str], str]

#: a definition's own patterns and masked columns, for work running in this context (see ``scope``)
_scoped: contextvars.ContextVar[tuple[tuple[re.Pattern[str], ...], frozenset[str]]] = \
    contextvars.ContextVar("udop_masking_scope", default=((), frozenset()))


@dataclass
class Redactor:
    """The one place text is cleaned before a user sees it: every secret value resolved in this
    process, and the registered rules (a URL's password by default; observability adds PII rules).

    Check samples, task error messages and log lines pass through ``redact`` / ``redact_value``.
    """

    _values: set[str] = field(default_factory=set)
    _rules: dict[str, Rule] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    #: what ``redact`` applies, rebuilt when a secret or rule changes (read without the lock: each
    #: line of every log passes here, and replacing a tuple is atomic)
    _snapshot: tuple[tuple[str, ...], tuple[Rule, ...]] = ((), ())

    def _changed(self) -> None:  # with the lock held
        self._snapshot = (tuple(sorted(self._values, key=len, reverse=True)), tuple(self._rules.values()))

    def add_secret(self, value: str | None) -> None:
        """Remember a resolved secret; too-short values would mask ordinary text, so they are not."""
        if value and len(value) >= 4:
            with self._lock:
                if value not in self._values:
                    self._values.add(value)
                    self._changed()

    def add_rule(self, name: str, rule: Rule) -> None:
        """Register (or replace) a rule: a function from text to text with the sensitive parts masked."""
        with self._lock:
            self._rules[name] = rule
            self._changed()

    def remove_rule(self, name: str) -> None:
        with self._lock:
            self._rules.pop(name, None)
            self._changed()

    @contextmanager
    def scope(self, patterns: Iterable[str] = (), columns: Iterable[str] = ()) -> Iterator[None]:
        """Within this block (this thread or task), also mask what ``patterns`` match and the values
        of ``columns`` in mappings (check samples): a definition's ``spec.masking``."""
        compiled = tuple(re.compile(p) for p in patterns)
        names = frozenset(c.lower() for c in columns)
        if not compiled and not names:
            yield
            return
        outer = _scoped.get()
        token = _scoped.set((outer[0] + compiled, outer[1] | names))
        try:
            yield
        finally:
            _scoped.reset(token)

    def add_pattern(self, name: str, pattern: str | re.Pattern[str], replacement: str = MASK) -> None:
        compiled = re.compile(pattern) if isinstance(pattern, str) else pattern
        self.add_rule(name, lambda text: compiled.sub(replacement, text))

    def add_environment_secrets(self, environ: Mapping[str, str] | None = None) -> None:
        """Every environment variable whose name says it is a secret (``UDOP_JWT_SECRET``,
        ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``*_PASSWORD``)."""
        for name, value in (os.environ if environ is None else environ).items():
            if looks_secret_name(name) or name in ("AWS_ACCESS_KEY_ID", "DATABASE_URL"):
                self.add_secret(value)

    def redact(self, text: str) -> str:
        values, rules = self._snapshot
        for value in values:
            if value in text:
                text = text.replace(value, MASK)
        for rule in rules:
            text = rule(text)
        for pattern in _scoped.get()[0]:
            text = pattern.sub(MASK, text)
        return text

    def redact_value(self, value: Any) -> Any:
        """``value`` with every string inside (dict keys and values, list items) redacted."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, Mapping):
            columns = _scoped.get()[1]
            return {self.redact_value(k): MASK if columns and isinstance(k, str) and k.lower() in columns
                    and v is not None else self.redact_value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.redact_value(v) for v in value]
        if isinstance(value, bytes | bytearray):
            return self.redact(bytes(value).decode("utf-8", "replace"))
        return value


_URL_PASSWORD = re.compile(r"(?P<pre>[a-zA-Z][\w+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]+)(?P<post>@)")

#: the process's redactor
redactor = Redactor()
redactor.add_rule("url-password", lambda text: _URL_PASSWORD.sub(
    lambda m: m.group("pre") + MASK + m.group("post"), text))
