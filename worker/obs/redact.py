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
import bisect
import functools
import re
from collections.abc import Callable
from typing import Any

from stdnum import iban as stdnum_iban

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


_NON_DIGIT = re.compile(r"\D")


def _digits(text: str) -> str:
    return _NON_DIGIT.sub("", text)


def _card_ok(text: str) -> bool:
    digits = _digits(text)
    return 13 <= len(digits) <= 19 and _luhn_ok(digits)


def _phone_ok(text: str) -> bool:
    return 8 <= len(_digits(text)) <= 15


_GROUP_SEPS = " .-\u00a0\u2007\u202f\u3000\uff0d\uff0e"
_GROUP_END = re.compile(rf"(?<=[\dA-Za-z)])(?=[{re.escape(_GROUP_SEPS)}]|\Z)")


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
        while pos < len(s) and s[pos] in _GROUP_SEPS:  # past the separator (maybe two spaces)
            pos += 1
        m = pattern.match(s, pos)
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
    quotes = {"q1": '"', "q2": "'", "q3": '\\"'}
    group = next((g for g in quotes if m[g] is not None), None)
    value = None if group is None else m[group]
    if m["ph"] or (value is not None and _PLACEHOLDER.fullmatch(value)):
        return m[0]  # already redacted by a more specific rule; keep its type
    quote = "" if group is None else quotes[group]
    return f"{m['name']}{m['sep']}{quote}{REDACTED}{quote}"


_PLACEHOLDER = re.compile(r"\[[A-Z_]+\]")


def _const(text: str) -> _Sub:
    return lambda m: text


def _keep_prefix(text: str) -> _Sub:
    return lambda m: m["pre"] + text


_IBAN_SEP = re.compile(r"[ \-\u00a0]")


def _iban_text_ok(text: str) -> bool:
    """A registered IBAN: its country's length and account format (python-stdnum's copy of the
    SWIFT registry) and mod-97, so hex ids, words and prose of the right shape are no IBAN."""
    return bool(stdnum_iban.is_valid(_IBAN_SEP.sub("", text)))


# Separators between digit groups: one or two spaces (also no-break, figure, narrow and
# ideographic spaces), a dot or a dash (also fullwidth). `\d` matches any decimal digit, so
# fullwidth digits are numbers too (`int` reads them).
_SEP = r"(?:[ \u00a0\u2007\u202f\u3000]{1,2}|[.\-\uff0d\uff0e])"
# One separator throughout (none, one or two spaces, a dash): a UUID's 8-4-4 groups are no IBAN.
_IBAN_RE = re.compile(
    r"(?i)\b[A-Z]{2}\d{2}(?P<sep>  ?|[-\u00a0]|)[A-Z0-9]{4}"
    r"(?:(?P=sep)[A-Z0-9]{4}){1,6}(?:(?P=sep)[A-Z0-9]{1,4})?\b"
)
# Compact, or grouped as printed on cards: 4-4-4-4(-3), 4-6-5 / 4-6-4 (Amex, Diners).
_CARD_RE = re.compile(
    r"(?<![\dA-Za-z_.+)\-\uff0d\uff0e])[2-6\uff12-\uff16]"
    rf"(?:\d{{12,18}}|\d{{3}}(?:{_SEP}\d{{4}}){{2,3}}(?:{_SEP}\d{{1,4}})?|\d{{3}}{_SEP}\d{{6}}{_SEP}\d{{4,5}})"
    r"(?![\dA-Za-z_\-\uff0d]|[.\uff0e]\d)"
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
_AWS_ID = r"(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|ABIA|ACCA)[A-Z0-9]{16}"
_AWS_ID_RE = re.compile(rf"\b{_AWS_ID}\b")
# A bare 40-character secret access key; taken for one only near an access key id (see `_aws_pairs`).
_AWS_SECRET_RE = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
AWS_PAIR_CHARS = 256  # how far from an `AKIA…` id a bare 40-character token counts as its secret


def _aws_pairs(s: str) -> str:
    """`s` with every bare 40-character token within `AWS_PAIR_CHARS` of an AWS key id replaced."""
    ids = [m.start() for m in _AWS_ID_RE.finditer(s)]
    if not ids:
        return s

    def near(m: re.Match[str]) -> bool:
        i = bisect.bisect_left(ids, m.start() - AWS_PAIR_CHARS)
        return i < len(ids) and ids[i] <= m.end() + AWS_PAIR_CHARS

    return _AWS_SECRET_RE.sub(lambda m: "[API_KEY]" if near(m) else m[0], s)


# The password of URL userinfo runs to the last '@' before the host; it may hold '/', '?' or '#'
# (not allowed there, but written), except when what follows the ':' is a port and a path, or a
# password already masked with asterisks (Celery logs its broker as `redis://:**@host`).
_URL_PASSWORD_RE = re.compile(
    r"(?P<pre>\b[A-Za-z][A-Za-z0-9+.-]{0,20}://[^\s:/@?#]{0,256}:)"
    r"(?!\d{1,5}(?:[/?#\s]|\Z))(?!\*{1,16}@)\S{1,256}?(?=@[^\s@/?#]{0,256}(?:[/?#\s]|\Z))"
)
_PEM_RE = re.compile(
    r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"
    r".*?(?:-----END [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----|\Z)",
    re.S,
)
_API_KEY_RE = re.compile(
    r"\bsk-(?:proj-|svcacct-|admin-|ant-)?[A-Za-z0-9_-]{20,}"
    r"|\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{10,}"
    rf"|\b{_AWS_ID}\b"
    r"|\bgh[pousr]_[A-Za-z0-9]{30,}|\bgithub_pat_[A-Za-z0-9_]{22,}"
    r"|\bxox[abposr]-[A-Za-z0-9-]{10,}|\bglpat-[A-Za-z0-9_-]{20,}"
    r"|\bAIza[0-9A-Za-z_-]{35}|\bhf_[A-Za-z0-9]{30,}|\bnpm_[A-Za-z0-9]{36}"
    r"|\bSG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}"
)
_KV_RE = re.compile(
    # The name starts at the field word: any prefix (`DB_`, `client`) stays as it is. A name and
    # value inside a JSON string that was escaped again (`{\"password\": \"x\"}`) count too.
    rf"(?i)(?P<name>(?:{_FIELD_WORDS})(?:[_-]{_SEG}){{0,6}})"
    r"(?P<sep>\\?[\"']?\s{0,8}[:=]\s{0,8})"
    r"(?:\"(?P<q1>[^\"\r\n]{0,4096})\"|'(?P<q2>[^'\r\n]{0,4096})'"
    r"|\\\"(?P<q3>(?:[^\"\\\r\n]|\\\\\\\"|\\[^\"\r\n]){0,4096})\\\""
    r"|(?:(?:Bearer|Basic|Token|Digest)\s+)?(?:(?P<ph>(?-i:\[[A-Z_]+\]))|(?:[^\s\"'&,;<>()\[\]{}\\]|\\(?!\")|&(?!\w{1,40}=))+)"
    r"|\{[^{}\r\n]{0,4096}\}|\[[^\[\]\r\n]{0,4096}\])"
)
# Unicode local parts and domains (IDN), the fullwidth at sign (U+FF20); a punycode TLD as well.
_EMAIL_RE = re.compile(
    r"[\w.%+-]{1,64}[@\uff20](?:[\w-]{1,63}[.\uff0e\u3002]){1,8}(?:[^\W\d_]{2,24}|xn--[a-z0-9-]{1,59})\b"
)
# (needles of which one must occur for the rule to run, or None; rewrite); order matters:
# containers (PEM, URL userinfo, JWT) first, then keys, headers, key=value, then number shapes.
_RULES: list[tuple[tuple[str, ...] | None, _Rewrite]] = [
    (("PRIVATE KEY",), _sub(_PEM_RE, _const("[PRIVATE_KEY]"))),
    (("://",), _sub(_URL_PASSWORD_RE, _keep_prefix("[URL_PASSWORD]"))),
    (
        ("eyJ",),
        _sub(re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), _const("[JWT]")),
    ),
    (None, _aws_pairs),  # before the key ids are replaced: it finds secrets by their id
    (None, _sub(_API_KEY_RE, _const("[API_KEY]"))),
    (
        None,
        _sub(
            re.compile(
                r"(?i)(?P<pre>aws.{0,24}?secret.{0,24}?[\s:=\"']{1,8})[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])"
            ),
            _keep_prefix("[API_KEY]"),
        ),
    ),
    (None, _sub(re.compile(r"(?P<scheme>\b(?i:bearer))\s+(?P<token>[A-Za-z0-9\-._~+/]{8,}=*)"), _bearer)),
    (
        None,
        _sub(re.compile(r"(?P<scheme>\b(?i:basic))\s+(?P<b64>[A-Za-z0-9+/]{8,}={0,2})(?![\w+/=])"), _basic),
    ),
    (
        None,
        _sub(
            re.compile(r"(?im)(?P<pre>(?<![\w-])(?:set-)?cookie\s*:\s*)[^\r\n\"']{1,4096}"),
            _keep_prefix(REDACTED),
        ),
    ),
    (None, _sub(_KV_RE, _kv)),
    (("@", "\uff20"), _sub(_EMAIL_RE, _const("[EMAIL]"))),
    (None, _groups(_IBAN_RE, _iban_text_ok, "[IBAN]")),
    (None, _groups(_CARD_RE, _card_ok, "[CARD]")),
    (None, _groups(_PHONE_RE, _phone_ok, "[PHONE]")),
]
_PARTIAL_TAIL = re.compile(r"(?:\S{1,6}[ .-]){0,6}\S*\Z")
# A string with none of these cannot match any rule (each rule needs a digit, '@', ':', '=', '-',
# '_' or one of these words). `\d` is any decimal digit, fullwidth ones included.
_CANDIDATE = re.compile(r"[\d@\uff20:=_+-]|eyJ|(?i:bearer|basic)|KEY|AIza|SG\.")


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
            if needle is None or any(n in s for n in needle):
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


def _key_text(key: Any) -> str:
    """A dict key as text for `is_secret_key`: bytes decoded, anything else (`Enum`, tuple) by `str`."""
    if isinstance(key, str):
        return key
    if isinstance(key, bytes | bytearray):
        return bytes(key[:256]).decode("utf-8", "replace")
    return str(key)[:256]


def redact(value: Any, *, fields: frozenset[str] = DEFAULT_FIELDS, max_chars: int = MAX_SCAN_CHARS) -> Any:
    """`value` with PII and secrets removed: strings via `redact_text`, containers recursively.

    Dict values under a secret-named key (see `is_secret_key`; a key that is not a str, such as
    `b"password"`, is judged by its text) become `[REDACTED]` unless None; string keys are redacted
    too (two keys that redact alike merge). Bytes come back as str; an int that is a Luhn-valid
    card number becomes `[CARD]`; other types come back unchanged.
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
                secret = is_secret_key(_key_text(k), fields)
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
