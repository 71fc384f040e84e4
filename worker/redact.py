"""Redaction: one function that removes PII and secrets from strings and nested data.

`redact` is the single entry point for log events, Sentry's `before_send`, error messages stored in
run records and sampled tool results. Strings get typed placeholders (`[EMAIL]`, `[PHONE]`,
`[CARD]`, `[IBAN]`, `[JWT]`, `[API_KEY]`, `[BEARER]`, `[BASIC_AUTH]`, `[URL_PASSWORD]`,
`[PRIVATE_KEY]`); in dicts, the value of any key named like a secret (`DEFAULT_FIELDS`) becomes
`[REDACTED]` whole. Card numbers must pass Luhn and IBANs mod-97, so ids and timestamps survive.

Bounds: every regex is precompiled and has bounded backtracking; strings with no candidate
character return at once. A string longer than `MAX_SCAN_CHARS` (64 KiB) is cut at a line end near
the limit, else at a space (dropping the last word and the short groups before it, so no fragment of
a cut card, phone or key is left), then redacted, and comes back at most `MAX_SCAN_CHARS` long ending
in `TRUNCATED_MARK`: work and output stay bounded whatever the input (callers cap sizes before this
anyway). Nesting deeper than `MAX_DEPTH` becomes `[DEPTH]`. Redacting twice gives the same result
as redacting once, for strings under the cap.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Callable
from typing import Any

MAX_SCAN_CHARS = 64 * 1024
MAX_DEPTH = 32
TRUNCATED_MARK = "...[TRUNCATED]"
REDACTED = "[REDACTED]"

DEFAULT_FIELDS: frozenset[str] = frozenset(
    {
        "password", "passwd", "pwd", "passphrase", "secret", "token", "authorization", "auth",
        "api_key", "apikey", "cookie", "set-cookie", "private_key", "secret_key", "client_secret",
        "access_token", "refresh_token", "id_token", "session_token", "credentials", "credential",
        "dsn",
    }
)  # fmt: skip

_Sub = Callable[[re.Match[str]], str]
_Rewrite = Callable[[str], str]


_LUHN_DOUBLE = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)


def _luhn_ok(digits: str) -> bool:
    odd = sum(int(ch) for ch in digits[-1::-2])
    even = sum(_LUHN_DOUBLE[int(ch)] for ch in digits[-2::-2])
    return (odd + even) % 10 == 0


_IBAN_DIGITS = str.maketrans({chr(c): str(c - 55) for c in range(ord("A"), ord("Z") + 1)})


def _iban_ok(compact: str) -> bool:
    if not 15 <= len(compact) <= 34 or not compact[2:4].isdigit():
        return False
    return int((compact[4:] + compact[:4]).translate(_IBAN_DIGITS)) % 97 == 1


_NON_DIGIT = re.compile(r"\D")


def _digits(text: str) -> str:
    return _NON_DIGIT.sub("", text)


def _card_ok(text: str) -> bool:
    digits = _digits(text)
    return 13 <= len(digits) <= 19 and _luhn_ok(digits)


def _phone_ok(text: str) -> bool:
    return 8 <= len(_digits(text)) <= 15


_GROUP_END = re.compile(r"(?<=[0-9A-Za-z)])(?=[ .-]|\Z)")


def _groups(pattern: re.Pattern[str], valid: Callable[[str], bool], placeholder: str) -> _Rewrite:
    """A rewrite for runs of digit groups that may hold several numbers side by side.

    In each match, the placeholder replaces the longest prefix ending at a group that is `valid`
    and after which another valid number starts (or nothing follows); failing that, the longest
    valid prefix; failing that, the first group stays. Scanning resumes right after, in the whole
    string, so a number that starts inside a rejected run or straddles its end is still found.
    """

    def ends(text: str) -> list[int]:
        return [g.start() for g in _GROUP_END.finditer(text)] or [len(text)]

    def starts_number(s: str, pos: int) -> bool:
        m = pattern.match(s, pos + 1)  # + 1: past the separator
        return m is not None and any(valid(m[0][:e]) for e in ends(m[0]))

    def rewrite(s: str) -> str:
        out, pos = [], 0
        while m := pattern.search(s, pos):
            text, at, cuts = m[0], m.start(), ends(m[0])
            good = [e for e in reversed(cuts) if valid(text[:e])]
            end = next(
                (e for e in good if e == len(text) or starts_number(s, at + e)), good[0] if good else 0
            )
            out.append(s[pos:at] + (placeholder if end else text[: cuts[0]]))
            pos = at + (end or cuts[0])
        out.append(s[pos:])
        return "".join(out)

    return rewrite


def _sub(pattern: re.Pattern[str], replace: _Sub) -> _Rewrite:
    return functools.partial(pattern.sub, replace)


def _basic(m: re.Match[str]) -> str:
    blob = m["b64"]
    try:
        decoded = base64.b64decode(blob + "=" * (-len(blob) % 4), validate=True)
    except (binascii.Error, ValueError):
        return m[0]
    return f"{m['scheme']} [BASIC_AUTH]" if b":" in decoded else m[0]


def _bearer(m: re.Match[str]) -> str:
    token = m["token"]
    if len(token) >= 20 or any(ch.isdigit() for ch in token):
        return f"{m['scheme']} [BEARER]"
    return m[0]


def _kv(m: re.Match[str]) -> str:
    value = m["q1"] if m["q1"] is not None else m["q2"]
    if m["ph"] or (value is not None and _PLACEHOLDER.fullmatch(value)):
        return m[0]  # already redacted by a more specific rule; keep its type
    quote = "" if value is None else '"' if m["q1"] is not None else "'"
    return f"{m['name']}{m['sep']}{quote}{REDACTED}{quote}"


_PLACEHOLDER = re.compile(r"\[[A-Z_]+\]")


def _const(text: str) -> _Sub:
    return lambda m: text


def _keep_prefix(text: str) -> _Sub:
    return lambda m: m["pre"] + text


_IBAN_RE = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
# Compact, or grouped as printed on cards: 4-4-4-4(-3), 4-6-5 / 4-6-4 (Amex, Diners).
_CARD_RE = re.compile(
    r"(?<![0-9A-Za-z_.+)-])[2-6]"
    r"(?:\d{12,18}|\d{3}(?:[ -]\d{4}){2,3}(?:[ -]\d{1,4})?|\d{3}[ -]\d{6}[ -]\d{4,5})"
    r"(?![0-9A-Za-z_-]|\.\d)"
)
_PHONE_RE = re.compile(
    r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(\d{1,4}\))?[ .-]?\d{1,14}(?:[ .-]\d{1,14}){0,6}(?!\w|\.\d)"
    r"|(?<![\w.:+-])(?:1[ .-])?(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}(?![\w:-]|\.\d)"
    r"|(?<![\w.:+-])0[1-9]\d{1,3}[ -]?\d{3,4}[ -]?\d{3,4}(?![\w:-]|\.\d)"
    r"|(?<![\w.:+-])0[1-9](?:[ .]\d{2}){4}(?![\w:-]|\.\d)"
)
_FIELD_WORDS = (
    r"password|passwd|pwd|passphrase|secret|token|api[_-]?key|authorization|auth|cookie|"
    r"private[_-]?key|secret[_-]?key|access[_-]?key|credentials?|dsn"
)
_SEG = r"[A-Za-z0-9]{1,40}"
# (needle that must occur for the rule to run, or None; rewrite); order matters:
# containers (PEM, URL userinfo, JWT) first, then keys, headers, key=value, then number shapes.
_SUBS: list[tuple[str | None, re.Pattern[str], _Sub]] = [
    (
        "PRIVATE KEY",
        re.compile(
            r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]{0,40}PRIVATE KEY-----|\Z)",
            re.S,
        ),
        _const("[PRIVATE_KEY]"),
    ),
    (
        "://",
        re.compile(r"(?P<pre>\b[A-Za-z][A-Za-z0-9+.-]{0,20}://[^\s:/@?#]{0,256}:)[^\s/?#]{1,256}(?=@)"),
        _keep_prefix("[URL_PASSWORD]"),
    ),
    ("eyJ", re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), _const("[JWT]")),
    (
        None,
        re.compile(
            r"\bsk-(?:proj-|svcacct-|admin-|ant-)?[A-Za-z0-9_-]{20,}"
            r"|\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{10,}"
            r"|\b(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|ABIA|ACCA)[A-Z0-9]{16}\b"
            r"|\bgh[pousr]_[A-Za-z0-9]{30,}|\bgithub_pat_[A-Za-z0-9_]{22,}"
            r"|\bxox[abposr]-[A-Za-z0-9-]{10,}|\bglpat-[A-Za-z0-9_-]{20,}"
            r"|\bAIza[0-9A-Za-z_-]{35}|\bhf_[A-Za-z0-9]{30,}|\bnpm_[A-Za-z0-9]{36}"
            r"|\bSG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}"
        ),
        _const("[API_KEY]"),
    ),
    (
        None,
        re.compile(r"(?i)(?P<pre>aws.{0,24}?secret.{0,24}?[\s:=\"']{1,8})[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])"),
        _keep_prefix("[API_KEY]"),
    ),
    (None, re.compile(r"(?P<scheme>\b[Bb]earer)\s+(?P<token>[A-Za-z0-9\-._~+/]{8,}=*)"), _bearer),
    (None, re.compile(r"(?P<scheme>\b[Bb]asic)\s+(?P<b64>[A-Za-z0-9+/]{8,}={0,2})(?![\w+/=])"), _basic),
    (
        None,
        re.compile(r"(?im)(?P<pre>(?<![\w-])(?:set-)?cookie\s*:\s*)[^\r\n\"']{1,4096}"),
        _keep_prefix(REDACTED),
    ),
    (
        None,
        re.compile(
            # The name starts at the field word: any prefix (`DB_`, `client`) stays as it is.
            rf"(?i)(?P<name>(?:{_FIELD_WORDS})(?:[_-]{_SEG}){{0,6}})"
            r"(?P<sep>[\"']?\s{0,8}[:=]\s{0,8})"
            r"(?:\"(?P<q1>[^\"\r\n]{0,4096})\"|'(?P<q2>[^'\r\n]{0,4096})'"
            r"|(?:(?:Bearer|Basic|Token|Digest)\s+)?(?:(?P<ph>(?-i:\[[A-Z_]+\]))|(?:[^\s\"'&,;<>()\[\]{}]|&(?!\w{1,40}=))+)"
            r"|\{[^{}\r\n]{0,4096}\}|\[[^\[\]\r\n]{0,4096}\])"
        ),
        _kv,
    ),
    (
        "@",
        re.compile(r"[A-Za-z0-9._%+-]{1,64}@(?:[A-Za-z0-9-]{1,63}\.){1,8}[A-Za-z]{2,24}\b"),
        _const("[EMAIL]"),
    ),
]
_RULES: list[tuple[str | None, _Rewrite]] = [
    *((needle, _sub(pattern, replace)) for needle, pattern, replace in _SUBS),
    (None, _groups(_IBAN_RE, lambda t: _iban_ok(t.replace(" ", "").upper()), "[IBAN]")),
    (None, _groups(_CARD_RE, _card_ok, "[CARD]")),
    (None, _groups(_PHONE_RE, _phone_ok, "[PHONE]")),
]
_PARTIAL_TAIL = re.compile(r"(?:\S{1,6}[ .-]){0,6}\S*\Z")
# A string with none of these cannot match any rule (each rule needs a digit, '@', ':', '=', '-',
# '_' or one of these words).
_CANDIDATE = re.compile(r"[0-9@:=_+-]|eyJ|[Bb]earer|[Bb]asic|KEY|AIza|SG\.")


def redact_text(s: str, *, max_chars: int = MAX_SCAN_CHARS) -> str:
    """`s` with every PII or secret pattern replaced by its placeholder; at most `max_chars` long
    (which is at most `MAX_SCAN_CHARS`, and at least 1 KiB)."""
    max_chars = min(max(max_chars, 1024), MAX_SCAN_CHARS)
    truncated = len(s) > max_chars
    if truncated:
        # Redact a little past the cap, so that a secret across it is still whole when the rules
        # see it; end at a line break, or drop the last word and the short groups before it (the
        # rest of a card, phone or key cut at the window's end). The result is cut to size after.
        s = s[: max_chars + 512]
        newline = s.rfind("\n", max_chars - min(4096, max_chars // 4))
        s = s[:newline] if newline > 0 else s[:-1024] + _PARTIAL_TAIL.sub("", s[-1024:])
    if _CANDIDATE.search(s):
        for needle, rewrite in _RULES:
            if needle is None or needle in s:
                s = rewrite(s)
    if not truncated:
        return s
    return s[: max_chars - len(TRUNCATED_MARK)] + TRUNCATED_MARK


@functools.lru_cache(maxsize=4096)
def _normal_key(key: str) -> str:
    key = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key)
    return "_" + re.sub(r"[^a-z0-9]+", "_", key.lower()) + "_"


@functools.lru_cache(maxsize=4096)
def is_secret_key(key: str, fields: frozenset[str] = DEFAULT_FIELDS) -> bool:
    """True when `key` names a secret: it equals a field or holds one as a whole `_`-separated part.

    `accessToken`, `X-Api-Key` and `db_password` match; `max_tokens` and `author` do not.
    """
    normal = _normal_key(key)
    return any(_normal_key(f) in normal for f in fields)


def redact(value: Any, *, fields: frozenset[str] = DEFAULT_FIELDS, max_chars: int = MAX_SCAN_CHARS) -> Any:
    """`value` with PII and secrets removed: strings via `redact_text`, containers recursively.

    Dict values under a secret-named key (see `is_secret_key`) become `[REDACTED]` unless None;
    string keys are redacted too (two keys that redact alike merge). Bytes come back as str; an
    int that is a Luhn-valid card number becomes `[CARD]`; other types come back unchanged.
    `max_chars` bounds every string, as in `redact_text`.
    """

    def walk(value: Any, depth: int) -> Any:
        if isinstance(value, str):
            return redact_text(value, max_chars=max_chars)
        if depth >= MAX_DEPTH and isinstance(value, dict | list | tuple | set | frozenset):
            return "[DEPTH]"
        if isinstance(value, dict):
            out: dict[Any, Any] = {}
            for k, v in value.items():
                secret = isinstance(k, str) and is_secret_key(k, fields)
                key = redact_text(k, max_chars=max_chars) if isinstance(k, str) else k
                out[key] = REDACTED if secret and v is not None else walk(v, depth + 1)
            return out
        if isinstance(value, list | tuple | set | frozenset):
            items = [walk(v, depth + 1) for v in value]
            if isinstance(value, list):
                return items
            return tuple(items) if isinstance(value, tuple) else set(items)
        if isinstance(value, bytes | bytearray):
            return walk(bytes(value[: max_chars * 4]).decode("utf-8", "replace"), depth)
        if isinstance(value, int) and not isinstance(value, bool) and 10**12 <= abs(value) < 10**19:
            digits = str(abs(value))
            return "[CARD]" if digits[0] in "23456" and _luhn_ok(digits) else value
        return value

    return walk(value, 0)
