"""The corpus's secrets (tests/pii_corpus.py), and whether any of them leaks into a text.

A leak check looks for each secret of at least MIN_SECRET_CHARS characters, whole and as
WINDOW-character windows of it (a cut fragment holds one of them), as it is and as it reads
inside a JSON string; an occurrence inside one of the fleet's random ids, or inside a longer
number, is chance and no leak.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from tests.pii_corpus import PII_CASES

MIN_SECRET_CHARS = 6  # shorter fragments ("abc", "a=1") also occur in ids and ordinary text
WINDOW = 10  # a leak check looks for the whole secret and for 10-character windows of it


@dataclass(frozen=True)
class Case:
    label: str
    value: Any  # a string, or a dict as a tool's arguments would hold it
    secrets: tuple[str, ...]


CORPUS: list[Case] = [
    Case(label, value, kept)
    for label, value, secrets in PII_CASES
    if (kept := tuple(s for s in secrets if len(s) >= MIN_SECRET_CHARS))
]
TEXTS: list[Case] = [c for c in CORPUS if isinstance(c.value, str)]
SECRETS: list[tuple[str, str]] = [(c.label, s) for c in CORPUS for s in c.secrets]


def _probes(secret: str) -> set[str]:
    """The whole secret and its head, middle and tail windows: a cut fragment holds one of them."""
    if len(secret) <= WINDOW:
        return {secret}
    mid = (len(secret) - WINDOW) // 2
    return {secret, secret[:WINDOW], secret[mid : mid + WINDOW], secret[-WINDOW:]}


PROBES: list[tuple[str, str]] = [
    (label, variant)
    for label, s in SECRETS
    for p in _probes(s)
    for variant in {p, json.dumps(p)[1:-1]}  # as it is, and as it reads inside a JSON string
]


# The fleet's own random ids (run and trace ids: 32 hex; Sentry span ids: 16 hex) can hold a short
# probe by chance ("822463" of an Amex number): an occurrence strictly inside such an id is no leak.
# A secret that is itself hex (a bearer token) is still found: its probe is the whole token.
def _inside_an_id(text: str, start: int, end: int) -> bool:
    left = start
    while left > 0 and text[left - 1] in "0123456789abcdef":
        left -= 1
    right = end
    while right < len(text) and text[right] in "0123456789abcdef":
        right += 1
    token = text[left:right]
    return (left, right) != (start, end) and 16 <= len(token) <= 32 and bool(re.search("[a-f]", token))


# A digits-only probe can also occur by chance inside a longer number: a timestamp, a duration, or
# the fraction of Sentry's `sample_rand` ("0.822463", six random decimals in every trace's baggage).
# A card or phone number leaks with its own separators around the probe, never more digits.
def _inside_a_number(text: str, start: int, end: int) -> bool:
    if not text[start:end].isdigit():
        return False
    before, after = text[start - 1 : start], text[end : end + 1]
    return before.isdigit() or after.isdigit() or text[max(0, start - 2) : start] == "0."


def _occurs(probe: str, text: str) -> bool:
    at = text.find(probe)
    while at != -1:
        if not _inside_an_id(text, at, at + len(probe)) and not _inside_a_number(text, at, at + len(probe)):
            return True
        at = text.find(probe, at + 1)
    return False


def leaks(text: str) -> list[str]:
    """The corpus labels some of whose secret text occurs in `text` (not by chance in an id)."""
    return sorted({label for label, probe in PROBES if probe in text and _occurs(probe, text)})


def excerpt(text: str, labels: list[str]) -> str:
    """Where the first leaked probe occurs, for the failure message."""
    for label, probe in PROBES:
        if label in labels and probe in text:
            at = text.index(probe)
            return f"{label!r}: ...{text[max(0, at - 300) : at + 200]}..."
    return ""
