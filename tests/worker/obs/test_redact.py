"""worker.obs.redact: every PII and secret string in the corpus is removed wherever it sits; look-alikes
(timestamps, ids, versions, durations, Luhn-invalid numbers) survive; the work is bounded."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from tests.pii_corpus import NON_PII, PII_CASES, PII_OBJECTS
from worker.obs.redact import (
    DEFAULT_FIELDS,
    MAX_SCAN_CHARS,
    REDACTED,
    TRUNCATED_MARK,
    is_secret_key,
    redact,
    redact_text,
)

CASE_IDS = [label for label, _, _ in PII_CASES]


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _leaks(output: Any, secrets: tuple[str, ...]) -> list[str]:
    """Every secret of which a fragment (8 characters, or the whole secret when shorter) survives."""
    text = output if isinstance(output, str) else json.dumps(output, default=str)
    found = []
    for secret in secrets:
        width = min(len(secret), 8)
        if any(secret[i : i + width] in text for i in range(len(secret) - width + 1)):
            found.append(secret)
    return found


def _luhn_ok(number: str) -> bool:
    digits = re.sub(r"\D", "", number)  # separators out; `int` reads fullwidth digits too
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _iban_ok(iban: str) -> bool:
    compact = re.sub(r"[ -]", "", iban)
    moved = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1


def test_corpus_has_at_least_60_pii_items_and_30_look_alikes() -> None:
    assert len(PII_CASES) >= 60
    assert len(NON_PII) >= 30
    assert len(set(CASE_IDS)) == len(CASE_IDS)


def test_corpus_cards_and_ibans_are_format_valid_so_the_checks_are_exercised() -> None:
    cards = [v for label, v, _ in PII_CASES if label.startswith("card ")]
    ibans = [v for label, v, _ in PII_CASES if label.startswith("iban ")]
    assert len(cards) >= 10 and len(ibans) >= 6
    assert all(_luhn_ok(c) for c in cards)
    assert all(_iban_ok(i) for i in ibans)
    assert not _luhn_ok("4111111111111112")  # the Luhn-invalid look-alike in NON_PII


@pytest.mark.parametrize(("label", "value", "secrets"), PII_CASES, ids=CASE_IDS)
def test_pii_item_is_removed_from_the_bare_value(label: str, value: Any, secrets: tuple[str, ...]) -> None:
    assert _leaks(redact(value), secrets) == []


@pytest.mark.parametrize(("label", "value", "secrets"), PII_CASES, ids=CASE_IDS)
def test_pii_item_is_removed_when_embedded_in_text(label: str, value: Any, secrets: tuple[str, ...]) -> None:
    head = "tool result for run 3f2a9c1e5b7d4f6a8c0e2b4d6f8a0c1e at 2024-01-15T10:30:00Z:"
    out = redact(f"{head}\n{_as_text(value)}\nend")
    assert _leaks(out, secrets) == []
    assert out.startswith(head)


@pytest.mark.parametrize(("label", "value", "secrets"), PII_CASES, ids=CASE_IDS)
def test_pii_item_is_removed_from_nested_dicts_and_lists(
    label: str, value: Any, secrets: tuple[str, ...]
) -> None:
    nested = {
        "run_id": "3f2a9c1e5b7d4f6a8c0e2b4d6f8a0c1e",
        "steps": [{"tool": "http.get", "result": {"body": value, "items": [1, (value, "x")]}}],
        "messages": [[{"role": "tool", "content": _as_text(value)}]],
    }
    out = redact(nested)
    assert _leaks(out, secrets) == []
    assert out["run_id"] == nested["run_id"] and out["steps"][0]["tool"] == "http.get"
    assert isinstance(out["steps"][0]["result"]["items"][1], tuple)


@pytest.mark.parametrize(("label", "value", "secrets"), PII_CASES, ids=CASE_IDS)
def test_pii_item_is_removed_from_exception_messages(
    label: str, value: Any, secrets: tuple[str, ...]
) -> None:
    try:
        raise RuntimeError(f"tool http.post failed for payload {value} (status 500)")
    except RuntimeError as exc:
        message = str(exc)
    assert _leaks(redact(message), secrets) == []


@pytest.mark.parametrize(("label", "value", "secrets"), PII_OBJECTS, ids=[c[0] for c in PII_OBJECTS])
def test_secret_under_a_key_that_is_not_a_str_is_removed(
    label: str, value: Any, secrets: tuple[str, ...]
) -> None:
    out = redact({"outer": value, "list": [value]})
    assert _leaks(repr(out), secrets) == []
    assert set(out["outer"]) == set(value)  # the keys stay what they were


@pytest.mark.parametrize("text", NON_PII)
def test_look_alike_survives_unchanged(text: str) -> None:
    assert redact(text) == text


def test_ordinary_keys_and_values_survive_in_dicts() -> None:
    record = {
        "run_id": "3f2a9c1e5b7d4f6a8c0e2b4d6f8a0c1e",
        "usage": {"max_tokens": 1024, "tokens": 1500, "input_tokens": 1200, "seconds": 1.5},
        "author": "agentfleet",
        "steps": [{"step": 3, "duration_ms": 1500, "ok": True, "error_type": None}],
        "started_at": "2024-01-15T10:30:00Z",
        "key_count": 12,
    }
    assert redact(record) == record


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("password", True),
        ("DB_PASSWORD", True),
        ("dbPassword", True),
        ("X-Api-Key", True),
        ("apiKey", True),
        ("Authorization", True),
        ("set-cookie", True),
        ("client_secret", True),
        ("max_tokens", False),
        ("tokens", False),
        ("author", False),
        ("passwords_count", False),
        ("run_id", False),
    ],
)
def test_secret_key_names_match_whole_parts_only(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


def test_configured_field_names_replace_the_whole_value() -> None:
    fields = DEFAULT_FIELDS | {"ssn"}
    out = redact({"ssn": "078-05-1120", "profile": {"customer_ssn": "078-05-1120"}}, fields=fields)
    assert out == {"ssn": REDACTED, "profile": {"customer_ssn": REDACTED}}
    assert redact({"ssn": "078-05-1120"})["ssn"] == "078-05-1120"  # not a default field


def test_secret_field_with_none_value_stays_none() -> None:
    assert redact({"password": None, "token": ""}) == {"password": None, "token": REDACTED}


def test_placeholders_name_what_was_removed() -> None:
    text = redact_text(
        "mail alice@example.com, call +44 20 7946 0958, card 4111 1111 1111 1111, "
        "iban DE89 3704 0044 0532 0130 00, db postgres://app:s3cr3t@db/app"
    )
    assert text == (
        "mail [EMAIL], call [PHONE], card [CARD], iban [IBAN], db postgres://app:[URL_PASSWORD]@db/app"
    )


def test_numbers_side_by_side_are_each_found() -> None:
    text = redact_text(
        "+44 20 7946 0958 020 7946 0958 then 5555 4111 1111 1111 1111 then "
        "4111 1111 1111 1111 555 then XX00 AAAA GB82 WEST 1234 5698 7654 32 NL91 ABNA 0417 1643 00"
    )
    assert text == "[PHONE] [PHONE] then 5555 [CARD] then [CARD] 555 then XX00 AAAA [IBAN] [IBAN]"


def test_bytes_are_redacted_and_returned_as_text() -> None:
    assert redact(b"owner alice@example.com") == "owner [EMAIL]"


@pytest.mark.parametrize(("label", "value", "secrets"), PII_CASES, ids=CASE_IDS)
def test_redaction_is_idempotent(label: str, value: Any, secrets: tuple[str, ...]) -> None:
    once = redact({"v": value, "t": f"x {_as_text(value)} y"})
    assert redact(once) == once


def test_deep_nesting_is_cut_instead_of_recursing_forever() -> None:
    deep: Any = "alice@example.com"
    for _ in range(200):
        deep = [deep]
    out = json.dumps(redact(deep))
    assert "[DEPTH]" in out and "alice@" not in out


def _huge_text(size: int) -> str:
    chunk = ", ".join(_as_text(v) for _, v, _ in PII_CASES) + ", words 2024-01-15T10:30:00Z 1500 ms\n"
    return (chunk * (size // len(chunk) + 1))[:size]


@pytest.mark.parametrize(
    "shape", ["mixed", "digits", "letters_and_underscores", "spaced_digits", "at_signs", "jwt_prefixes"]
)
def test_10_mb_string_is_redacted_in_bounded_time_and_size(shape: str) -> None:
    size = 10 * 1024 * 1024
    text = {
        "mixed": lambda: _huge_text(size),
        "digits": lambda: "4" * size,
        "letters_and_underscores": lambda: "password_a-" * (size // 11),
        "spaced_digits": lambda: "4 " * (size // 2),
        "at_signs": lambda: "a@b." * (size // 4),
        "jwt_prefixes": lambda: "eyJ." * (size // 4),
    }[shape]()
    started = time.process_time()  # CPU time of this process: other suites share the machine
    out = redact(text)
    took_s = time.process_time() - started
    assert took_s < 2.0
    assert len(out) <= MAX_SCAN_CHARS
    assert out.endswith(TRUNCATED_MARK)


def test_huge_string_keeps_no_pii_in_the_part_it_returns() -> None:
    out = redact(_huge_text(10 * 1024 * 1024))
    for _, value, secrets in PII_CASES:
        if isinstance(value, str):
            assert _leaks(out, secrets) == []


@pytest.mark.parametrize("offset", range(-66, 6, 6))
def test_a_card_or_key_cut_by_the_size_cap_leaves_no_fragment(offset: int) -> None:
    edge = MAX_SCAN_CHARS - len(TRUNCATED_MARK)
    for secret in (
        "4111 1111 1111 1111",
        "+44 20 7946 0958",
        "GB82 WEST 1234 5698 7654 32",
        "sk-" + "Ab9" * 20,
    ):
        filler = "lorem ipsum " * (edge // 12 + 1)
        start = (edge + offset) // 12 * 12 + offset % 12  # the secret starts after a whole filler word
        text = filler[:start] + secret + " " + filler
        out = redact_text(text)
        assert len(out) <= MAX_SCAN_CHARS
        *words, last = out[: -len(TRUNCATED_MARK)].split()
        allowed = {"lorem", "ipsum", "[CARD]", "[PHONE]", "[IBAN]", "[API_KEY]"}
        assert set(words) <= allowed, (secret, offset)
        assert any(word.startswith(last) for word in allowed), (secret, offset, last)  # cut mid-word


def _fill(unit: str, size: int) -> str:
    return (unit * (size // len(unit) + 1))[:size]


# Inputs built to make each of the December patterns (PGP blocks, escaped JSON, Unicode and
# fullwidth e-mail, lower-case and dashed IBANs, dotted / no-break / fullwidth cards, BEARER, a bare
# AWS secret beside its id, URL passwords with '/') backtrack as much as they can.
WORST_CASES: dict[str, str] = {
    "pgp_begin_without_end": "-----BEGIN PGP PRIVATE KEY BLOCK-----\n",
    "pgp_partial_headers": "-----BEGIN AAAA AAAA AAAA AAAA AAAA AAAA AAA PRIVATE KEY BLOC",
    "escaped_json_open_values": 'password\\": \\"',
    "escaped_json_backslashes": 'token\\": \\"\\\\\\"',
    "email_unicode_local_parts": "ü" * 63 + "@",
    "email_unicode_labels": "ü@ü.",
    "email_fullwidth_at": "a\uff20b\uff0e",
    "iban_lower_case_groups": "gb82 abcd ",
    "iban_dashed_groups": "gb82-abcd-",
    "iban_double_spaced_groups": "gb82  abcd  abcd  ",
    "card_dotted_groups": "4111.",
    "card_no_break_spaces": "4\u00a0",
    "card_double_spaces": "4111  ",
    "card_fullwidth_digits": "\uff14\uff11\uff11\uff11\u3000",
    "bearer_upper_case": "BEARER aaaaaaaa ",
    "aws_ids_and_secrets": "AKIAIOSFODNN7EXAMPLE " + "a" * 40 + " ",
    "aws_id_and_near_misses": "AKIAIOSFODNN7EXAMPLE " + "a" * 39 + " ",
    "url_schemes": "a://b:",
    "url_passwords_with_slashes_and_ats": "a://b:c/d@e@",
}


@pytest.mark.parametrize("shape", list(WORST_CASES))
def test_worst_case_64_kib_input_for_each_new_pattern_is_redacted_in_linear_time(shape: str) -> None:
    """Absolute bound: 2 s of CPU for 64 KiB (catastrophic backtracking takes minutes or more).
    Growth: four times the input may cost at most eight times the CPU, plus slack for the clock's
    resolution (a quadratic pattern costs sixteen times)."""
    size = MAX_SCAN_CHARS - 1  # under the cap: the whole input is scanned, nothing cut

    def cpu_s(text: str) -> float:
        started = time.process_time()  # CPU time of this process: other suites share the machine
        redact_text(text)
        return time.process_time() - started

    quarter_s = min(cpu_s(_fill(WORST_CASES[shape], size // 4)) for _ in range(3))
    full_s = min(cpu_s(_fill(WORST_CASES[shape], size)) for _ in range(3))
    assert full_s < 2.0
    assert full_s <= 8 * quarter_s + 0.05, (quarter_s, full_s)


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("Connected to redis://:**@127.0.0.1:6379/0", "redis://:**@127.0.0.1:6379/0"),
        ("broker redis://:***@redis:6379/0", "redis://:***@redis:6379/0"),
    ],
)
def test_a_url_password_already_masked_with_asterisks_is_left_as_it_is(text: str, kept: str) -> None:
    assert kept in redact_text(text)
    assert redact_text("redis://:**x@h/0") == "redis://:[URL_PASSWORD]@h/0"  # not only asterisks
