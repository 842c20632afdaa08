"""PII masking: the built-in detectors the one redactor (``udop.sandbox.redactor``) applies on top of
secret values, and the switch that turns them on.

Detectors are conservative where a false positive would hide useful text: a card number must pass the
Luhn check, an IBAN its mod-97 checksum and an IPv6 address Python's parser; a phone number must be
written in international form (``+41 44 668 18 00``) or the North-American ``(555) 123-4567`` shape,
so dates, durations and row counts stay readable.

``UDOP_MASK_PII`` (``auto`` default: on in server mode, off for ``udop run``; ``on``; ``off``) decides;
the server policy and ``udop run`` call ``apply_setting``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Literal

from pydantic import Field

from udop.redaction import MASK, Redactor, redactor
from udop.settings import UdopSettings, load_settings

__all__ = [
    "DETECTORS",
    "MaskingSettings",
    "apply_setting",
    "iban_ok",
    "install_detectors",
    "luhn_ok",
    "remove_detectors",
]

PiiSwitch = Literal["auto", "on", "off"]


class MaskingSettings(UdopSettings):
    mask_pii: PiiSwitch = Field(
        "auto",
        description="built-in PII detectors in logs, errors, check "
        "samples and responses: auto (on in server mode), on, off",
    )


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(text: str) -> bool:
    compact = text.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34:
        return False
    moved = compact[4:] + compact[:4]
    try:
        number = int("".join(str(int(ch, 36)) for ch in moved))
    except ValueError:
        return False
    return number % 97 == 1


def _checked(pattern: str, accept: Callable[[str], bool], flags: int = 0) -> Callable[[str], str]:
    compiled = re.compile(pattern, flags)

    def rule(text: str) -> str:
        return compiled.sub(lambda m: MASK if accept(m.group(0)) else m.group(0), text)

    return rule


def _card(candidate: str) -> bool:
    digits = re.sub(r"[ -]", "", candidate)
    return 13 <= len(digits) <= 19 and luhn_ok(digits)


def _ipv6(candidate: str) -> bool:
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


def _plain(pattern: str, flags: int = 0) -> Callable[[str], str]:
    compiled = re.compile(pattern, flags)
    return lambda text: compiled.sub(MASK, text)


def _guarded(could_match: Callable[[str], bool], rule: Callable[[str], str]) -> Callable[[str], str]:
    """``rule`` run only on text that ``could_match`` (a check in C: a substring, a count) says might
    hold a match: most log lines hold none, and the regular expressions cost far more than the check."""
    return lambda text: rule(text) if could_match(text) else text


_DIGITS = str.maketrans("", "", "0123456789")
_KEY_PREFIXES = ("AKIA", "ASIA", "ABIA", "ACCA", "AIDA", "AROA")
_IBAN_START = re.compile(r"[A-Z]{2}\d{2}")


def _digits(text: str) -> int:
    return len(text) - len(text.translate(_DIGITS))


#: name -> rule, in the order they run (tokens before emails, cards before phone numbers)
DETECTORS: dict[str, Callable[[str], str]] = {
    "pii-jwt": _plain(r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"),
    "pii-aws-key": _plain(r"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA|AIDA|AROA)[A-Z0-9]{16}(?![A-Z0-9])"),
    "pii-email": _plain(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
    "pii-iban": _checked(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b", iban_ok),
    "pii-card": _checked(r"(?<![\d.])\d(?:[ -]?\d){12,18}(?![\d.])", _card),
    "pii-ipv6": _checked(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|:)(?![\w:])", _ipv6),
    "pii-ipv4": _plain(
        r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}"
        r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d.])"
    ),
    "pii-phone": _plain(
        r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}\d(?!\d)"
        r"|(?<!\w)\(\d{3}\) ?\d{3}[ .-]\d{4}(?!\d)"
    ),
}

#: what a text must contain for each detector to possibly match
_COULD_MATCH: dict[str, Callable[[str], bool]] = {
    "pii-jwt": lambda text: "eyJ" in text,
    "pii-aws-key": lambda text: any(p in text for p in _KEY_PREFIXES),
    "pii-email": lambda text: "@" in text,
    "pii-iban": lambda text: _IBAN_START.search(text) is not None,
    "pii-card": lambda text: _digits(text) >= 13,
    "pii-ipv6": lambda text: text.count(":") >= 2,
    "pii-ipv4": lambda text: text.count(".") >= 3,
    "pii-phone": lambda text: ("+" in text or "(" in text) and _digits(text) >= 4,
}
DETECTORS = {name: _guarded(_COULD_MATCH[name], rule) for name, rule in DETECTORS.items()}


def install_detectors(target: Redactor = redactor) -> None:
    for name, rule in DETECTORS.items():
        target.add_rule(name, rule)


def remove_detectors(target: Redactor = redactor) -> None:
    for name in DETECTORS:
        target.remove_rule(name)


def apply_setting(*, server: bool, target: Redactor = redactor) -> bool:
    """Turn the detectors on or off for this process per ``UDOP_MASK_PII``; returns whether on."""
    switch = load_settings(MaskingSettings).mask_pii
    on = switch == "on" or (switch == "auto" and server)
    if on:
        install_detectors(target)
    else:
        remove_detectors(target)
    return on
