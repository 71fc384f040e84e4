"""Schemathesis against the HTTP API's own OpenAPI (issue 7): no 5xx, no answer outside the schema.

One fleet serves the module (API, one agent worker, one tool worker, an admin key). The schema is
loaded from its `/openapi.json`; every request goes over HTTP, bounded and derandomized, so CI sends
the same requests on every run:

- generated requests for every operation (positive, and negative where the schema constrains
  something), with a valid key, and for /v1 without one or with a wrong one (401);
- schemathesis's coverage phase (boundary and type-confusion cases) through its CLI;
- plausible run submissions followed by GET / cancel and, once the runs end, a read of each;
- fixed requests that once broke the API, undocumented methods (405), and an API whose Redis is down.

Checks: schemathesis's default set (`not_a_server_error`, `status_code_conformance`,
`content_type_conformance`, `response_headers_conformance`, `response_schema_conformance`, and per
mode `positive_data_acceptance` / `negative_data_rejection`). The one exclusion is documented at
`EXCLUDED_CHECKS`; the Redis-down test leaves out `not_a_server_error`, as 503 is the contract's answer.

The tests call `APIOperation.as_strategy()` under Hypothesis's `@given` instead of
`schemathesis.pytest.from_fixture(...).parametrize()`: with pytest 9.2 the latter fails before the
first request (`'Function' object has no attribute '_nodeid'`, schemathesis 4.32.5).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import BaseSchema, GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import create_engine

from tests.harness import KEY_T1, TERMINAL, Fleet, RedisServer
from tests.history_rows import insert_runs, make_record
from worker.history.db import upgrade

ADMIN_KEY = "admin-key-for-fuzzing-0001"
WRONG_KEY = "key-nobody-holds-0000"
MAX_EXAMPLES = 20
UNAUTH_EXAMPLES = 5
SUBMIT_EXAMPLES = 25

# Every operation the API documents; a new one must be added here (and so gets fuzzed).
OPERATIONS = [
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("POST", "/v1/runs"),
    ("GET", "/v1/runs"),
    ("GET", "/v1/runs/{run_id}"),
    ("DELETE", "/v1/runs/{run_id}"),
    ("GET", "/v1/runs/{run_id}/events"),
    ("POST", "/v1/runs/{run_id}/cancel"),
    ("POST", "/v1/runs/{run_id}/approvals/{call_id}"),
    ("GET", "/v1/approvals"),
    ("GET", "/v1/usage"),
    ("GET", "/v1/admin/policies/{agent}"),
    ("PUT", "/v1/admin/policies/{agent}"),
    ("DELETE", "/v1/admin/policies/{agent}"),
]
V1_OPERATIONS = [op for op in OPERATIONS if op[1].startswith("/v1/")]
# Negative mode needs something the schema constrains (a body, a typed query); a bare string path
# parameter or an optional string header cannot be made invalid, so Hypothesis would find no case.
NEGATABLE = [
    ("POST", "/v1/runs"),
    ("GET", "/v1/runs"),
    ("GET", "/v1/usage"),
    ("GET", "/v1/runs/{run_id}"),
    ("PUT", "/v1/admin/policies/{agent}"),
    ("POST", "/v1/runs/{run_id}/approvals/{call_id}"),
    ("GET", "/v1/approvals"),
]

# POST /v1/runs refuses schema-valid bodies for reasons a static schema cannot state: the agent must
# be registered (plugins add agents at start), the input must fit that agent's own model, and
# budgets must not exceed the fleet's caps, which come from the runtime config. Such a 422 is the
# contract's answer, so `positive_data_acceptance` does not apply to that operation; every other
# check does, and `positive_data_acceptance` stays on for every other operation.
#
# GET /v1/runs takes a `cursor` only as the API gave it out (a string the schema cannot describe
# further); any other string is the 422 naming `cursor` that the contract asks for.
EXCLUDED_CHECKS: dict[tuple[str, str], list[Callable[..., Any]]] = {
    ("POST", "/v1/runs"): [positive_data_acceptance],
    ("GET", "/v1/runs"): [positive_data_acceptance],
}
# What every answer must satisfy where no generation mode applies (hand-built cases).
RESPONSE_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def fuzz_settings(max_examples: int) -> settings:
    """Bounded and reproducible: the same requests on every run, so CI failures reproduce."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),  # live HTTP is slow; filtered strategies are fine
        phases=[Phase.explicit, Phase.generate],  # no shrinking: the report shows the failing request
    )


@pytest.fixture(scope="module")
def fuzz_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """API, one agent worker (2 processes), one tool worker, with an admin key set; the run
    history is an SQLite file with the tables and a few runs of each tenant."""
    server = RedisServer()
    fleet = Fleet(
        server, {}, {"FLEET_ADMIN_KEYS": ADMIN_KEY, "FLEET_DATABASE_URL": history_db(tmp_path_factory)}
    )
    try:
        fleet.start(workers=1, concurrency=2)
        yield fleet
    finally:
        fleet.close()
        server.close()


def history_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The URL of an SQLite history with ended runs of t1 and t2, so lists and usage have rows."""
    url = f"sqlite:///{tmp_path_factory.mktemp('history') / 'history.db'}"
    engine = create_engine(url)
    upgrade(engine)  # as the API would: its first use finds the schema at the newest revision
    now = datetime.now(UTC)
    insert_runs(engine, [
        make_record(tenant, created_at=now - timedelta(hours=i), metadata={"n": i}, tokens=10, cost_usd=0.01)
        for tenant in ("t1", "t2") for i in range(5)
    ])  # fmt: skip
    engine.dispose()
    return url


@pytest.fixture(scope="module")
def api_schema(fuzz_fleet: Fleet) -> BaseSchema:
    return schemathesis.openapi.from_url(f"{fuzz_fleet.url}/openapi.json", timeout=30)


def key_for(path: str) -> str:
    return ADMIN_KEY if path.startswith("/v1/admin/") else KEY_T1


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# -- the schema ----------------------------------------------------------------------------------------


def test_openapi_documents_exactly_the_operations_this_module_fuzzes(api_schema: BaseSchema) -> None:
    documented = {
        (result.ok().method.upper(), result.ok().path) for result in api_schema.get_all_operations()
    }
    assert documented == set(OPERATIONS)


# -- generated requests ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "mode"),
    [(m, p, GenerationMode.POSITIVE) for m, p in OPERATIONS]
    + [(m, p, GenerationMode.NEGATIVE) for m, p in NEGATABLE],
    ids=lambda v: v.value if isinstance(v, GenerationMode) else v,
)
def test_generated_requests_with_a_valid_key_never_5xx_and_answer_as_documented(
    api_schema: BaseSchema, method: str, path: str, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]
    excluded = EXCLUDED_CHECKS.get((method, path), [])

    @fuzz_settings(MAX_EXAMPLES)
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: schemathesis.Case) -> None:
        case.call_and_validate(headers=bearer(key_for(path)), excluded_checks=excluded, timeout=40)

    fuzz()


@pytest.mark.parametrize("auth", ["absent", "wrong-key", "generated"])
@pytest.mark.parametrize(("method", "path"), V1_OPERATIONS)
def test_v1_requests_without_a_valid_key_are_401_as_documented(
    api_schema: BaseSchema, method: str, path: str, auth: str
) -> None:
    """`generated` keeps whatever Authorization value schemathesis made up (the schema declares the
    header as an optional string), `absent` drops it, `wrong-key` sends a well-formed unknown key."""
    operation = api_schema[path][method]

    @fuzz_settings(UNAUTH_EXAMPLES)
    @given(case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
    def fuzz(case: schemathesis.Case) -> None:
        headers: dict[str, str] | None = None
        if auth == "absent":
            case.headers.pop("authorization", None)
        elif auth == "wrong-key":
            headers = bearer(WRONG_KEY)
        response = case.call_and_validate(headers=headers, timeout=40)
        assert response.status_code == 401, response.text
        assert response.json()["error"]["type"] == "unauthorized"

    fuzz()


# -- schemathesis's coverage phase, through its CLI ------------------------------------------------------

# The coverage phase derives boundary and type-confusion cases from the schema deterministically
# (a number where a string goes, wait=30.000001, a missing field, an undocumented method...). Only
# the CLI runs it against a live URL (the Python API exposes the random fuzzing phase alone). The
# config gives the admin operations the admin key and turns off `positive_data_acceptance` for
# POST /v1/runs, for the reason at EXCLUDED_CHECKS; every other check is on.
COVERAGE_CONFIG = """
headers = {{ Authorization = "Bearer {tenant_key}" }}

[[operations]]
include-path-regex = "^/v1/admin/"
headers = {{ Authorization = "Bearer {admin_key}" }}

[[operations]]
include-path = "/v1/runs"
include-method = "POST"
checks.positive_data_acceptance.enabled = false

[[operations]]
include-path = "/v1/runs"
include-method = "GET"
checks.positive_data_acceptance.enabled = false
"""


def test_schemathesis_coverage_phase_finds_no_failure(fuzz_fleet: Fleet, tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(COVERAGE_CONFIG.format(tenant_key=KEY_T1, admin_key=ADMIN_KEY))
    argv = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color",
        "run", f"{fuzz_fleet.url}/openapi.json", "--phases", "coverage", "--workers", "1",
        "--generation-deterministic", "--request-timeout", "40",
    ]  # fmt: skip
    proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-20000:] + proc.stderr[-2000:]
    assert "Coverage" in proc.stdout and " failed" not in proc.stdout, proc.stdout[-20000:]


# -- submissions a client could plausibly send, and what follows them -----------------------------------

# JSON a client may send that Python's `json` parses into values JSON cannot answer back with:
# `1e400` is valid JSON and overflows to inf; `NaN` / `Infinity` are not JSON but Python accepts
# them; 300 levels of nesting pass the parser but not every serializer. Placeholders in the body
# are replaced by these literals after `json.dumps`.
RAW_LITERALS = {
    "@@1e400@@": "1e400",
    "@@-1e400@@": "-1e400",
    "@@NaN@@": "NaN",
    "@@Infinity@@": "Infinity",
    "@@deep@@": "[" * 300 + "]" * 300,
}

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(sorted(RAW_LITERALS))
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
steps = st.one_of(
    st.builds(lambda text: {"final": text}, st.text(max_size=20)),
    st.builds(lambda text: {"fail": text}, st.text(max_size=20)),
    st.builds(lambda s: {"sleep": s}, st.floats(min_value=0, max_value=0.05)),
    st.builds(
        lambda tool, args: {"tool": tool, "args": args},
        st.sampled_from(["echo", "echo", "http.get", "search.read", "no.such.tool"]) | st.text(max_size=10),
        st.dictionaries(st.text(max_size=8), json_values, max_size=3),
    ),
    json_values,  # not a step at all: a 422 naming input.plan
)


@st.composite
def run_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A POST /v1/runs body: mostly a `scripted` run that passes validation, sometimes not."""
    loop = draw(st.booleans()) and draw(st.booleans())
    plan = st.fixed_dictionaries({"plan": st.lists(steps, max_size=4), "loop": st.just(loop)})
    body: dict[str, Any] = {
        "agent": draw(st.sampled_from(["scripted"] * 8 + ["no-such-agent", "echo"])),
        "input": draw(json_values if draw(st.integers(0, 9)) == 0 else plan),
    }
    budgets = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "max_steps": st.integers(min_value=-1, max_value=30),
                "max_tool_calls": st.integers(min_value=-1, max_value=15),
                "max_seconds": st.floats(min_value=-1, max_value=70, allow_nan=False),
            },
        )
    )
    if loop:  # a looping run ends on its step budget, soon
        budgets["max_steps"] = draw(st.integers(min_value=1, max_value=5))
    if budgets or draw(st.booleans()):
        body["budgets"] = budgets
    if draw(st.booleans()):
        body["metadata"] = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=4))
    return body


def encode(body: Any) -> bytes:
    text = json.dumps(body)
    for placeholder, literal in RAW_LITERALS.items():
        text = text.replace(json.dumps(placeholder), literal)
    return text.encode()


def send(
    fleet: Fleet, schema: BaseSchema, method: str, path: str, *, raw_body: bytes | None = None,
    key: str = KEY_T1, query: dict[str, Any] | None = None, extra_headers: dict[str, str] | None = None,
    checks: list[Callable[..., Any]] = RESPONSE_CHECKS, path_parameters: dict[str, str] | None = None,
) -> httpx.Response:  # fmt: skip
    """Send one hand-built request over HTTP and validate the answer against `method path`'s schema."""
    operation = schema[path][method]
    path_parameters = path_parameters or {}
    headers = {**bearer(key), **(extra_headers or {})}
    if raw_body is not None:
        headers["Content-Type"] = "application/json"
    case = operation.Case(path_parameters=path_parameters, query=query or {}, headers=headers)
    url = fleet.url + path.format(**path_parameters)
    response = httpx.request(method, url, content=raw_body, params=query, headers=headers, timeout=40)
    try:
        case.validate_response(response, checks=checks)
    except BaseExceptionGroup as exc:  # schemathesis's FailureGroup: its curl line lacks the raw body
        sent = {k: v for k, v in headers.items() if k != "Authorization"}
        body = raw_body if raw_body is None or len(raw_body) < 400 else raw_body[:400] + b"..."
        raise AssertionError(f"{method} {url} {sent} {body!r}\n{exc}") from None
    return response


FOLLOW_UPS = [("GET", "/v1/runs/{run_id}"), ("POST", "/v1/runs/{run_id}/cancel")]


def test_plausible_submissions_never_5xx_and_the_runs_they_start_read_back_as_documented(
    fuzz_fleet: Fleet, api_schema: BaseSchema
) -> None:
    """POST /v1/runs with valid-ish bodies (and Idempotency-Keys from a small pool, so repeats and
    conflicts happen), then GET and cancel what was accepted; once every run has ended, each is read
    back with its step log. Every answer is checked against the schema."""
    accepted: set[str] = set()
    idempotency_keys = st.none() | st.sampled_from(["k-1", "k-2", "k-3", "not a valid key!"])

    @fuzz_settings(SUBMIT_EXAMPLES)
    @given(body=run_bodies(), idempotency_key=idempotency_keys, follow_up=st.sampled_from(FOLLOW_UPS))
    def submit(body: dict[str, Any], idempotency_key: str | None, follow_up: tuple[str, str]) -> None:
        extra = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        raw = encode(body)
        resp = send(fuzz_fleet, api_schema, "POST", "/v1/runs", raw_body=raw, extra_headers=extra)
        assert resp.status_code in (200, 202, 409, 422), resp.text
        if resp.status_code in (200, 202):
            run_id = resp.json()["id"]
            accepted.add(run_id)
            method, path = follow_up
            send(fuzz_fleet, api_schema, method, path, path_parameters={"run_id": run_id})

    submit()
    assert accepted, "no generated submission was accepted: the generator no longer exercises runs"
    for run_id in sorted(accepted):
        fuzz_fleet.wait(run_id, timeout=60)
        resp = send(
            fuzz_fleet, api_schema, "GET", "/v1/runs/{run_id}", query={"steps": "true"},
            path_parameters={"run_id": run_id},
        )  # fmt: skip
        assert resp.json()["status"] in TERMINAL


# -- requests found to break the API, kept as fixed cases --------------------------------------------

SCRIPTED_OK = {"agent": "scripted", "input": {"plan": [{"final": "ok"}]}}
RUNS, POLICY = ("POST", "/v1/runs"), ("PUT", "/v1/admin/policies/{agent}")
ECHO_INFINITY = {"plan": [{"tool": "echo", "args": {"x": "@@Infinity@@"}}]}
HOSTILE: dict[str, tuple[tuple[str, str], bytes, dict[str, str]]] = {
    "metadata-1e400": (RUNS, encode({**SCRIPTED_OK, "metadata": {"x": "@@1e400@@"}}), {}),
    "metadata-NaN": (RUNS, encode({**SCRIPTED_OK, "metadata": {"x": "@@NaN@@"}}), {}),
    "metadata-minus-1e400": (RUNS, encode({**SCRIPTED_OK, "metadata": {"x": "@@-1e400@@"}}), {}),
    "input-Infinity": (RUNS, encode({**SCRIPTED_OK, "input": ECHO_INFINITY}), {}),
    "metadata-300-deep-with-idempotency-key": (
        RUNS,
        encode({**SCRIPTED_OK, "metadata": {"x": "@@deep@@"}}),
        {"Idempotency-Key": "deep-1"},
    ),
    "policy-lone-surrogate": (POLICY, b'{"allowed_tools": ["\\ud800"]}', {}),
    "policy-1e400": (POLICY, b'{"max_spend_usd_per_day": 1e400}', {}),
    "policy-body-over-the-limit": (POLICY, b'{"allowed_tools": ["' + b"x" * 300_000 + b'"]}', {}),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_bodies_are_answered_as_documented_never_a_5xx(
    fuzz_fleet: Fleet, api_schema: BaseSchema, name: str
) -> None:
    (method, path), raw_body, extra_headers = HOSTILE[name]
    params = {"agent": "fuzzed-agent"} if "{agent}" in path else {}
    resp = send(
        fuzz_fleet, api_schema, method, path, raw_body=raw_body, key=key_for(path),
        extra_headers=extra_headers, path_parameters=params,
    )  # fmt: skip
    assert resp.status_code < 500


# -- HTTP methods the schema does not list -------------------------------------------------------------

PATHS = sorted({path for _, path in OPERATIONS})


@pytest.mark.parametrize("path", PATHS)
def test_a_method_the_schema_does_not_list_is_405_with_allow_naming_the_documented_ones(
    fuzz_fleet: Fleet, path: str
) -> None:
    documented = {m for m, p in OPERATIONS if p == path}
    url = fuzz_fleet.url + path.format(run_id="r" * 32, agent="fuzzed-agent", call_id="c1")
    for method in sorted({"GET", "POST", "PUT", "PATCH", "DELETE"} - documented):
        resp = httpx.request(method, url, headers=bearer(key_for(path)), timeout=40)
        assert resp.status_code == 405, (method, resp.text)
        assert resp.json()["error"]["type"] == "method_not_allowed"
        allow = {m.strip().upper() for m in resp.headers.get("allow", "").split(",") if m.strip()}
        # RFC 9110: Allow lists the target's methods; HEAD and OPTIONS may be implicit.
        assert allow - {"HEAD", "OPTIONS"} == documented, (method, resp.headers.get("allow"))


# -- answers while Redis is down -----------------------------------------------------------------------


def test_every_answer_while_redis_is_down_is_documented(api_schema: BaseSchema) -> None:
    """An API whose Redis is gone answers 503 (the contract's answer, so `not_a_server_error` is not
    run here); every such answer must be a status, type and body the schema documents."""
    server = RedisServer()
    server.stop()
    fleet = Fleet(server, {}, {"FLEET_ADMIN_KEYS": ADMIN_KEY})
    checks = [c for c in RESPONSE_CHECKS if c is not not_a_server_error]
    calls: list[tuple[str, str, bytes | None]] = [
        ("GET", "/readyz", None),
        ("GET", "/metrics", None),
        ("POST", "/v1/runs", encode(SCRIPTED_OK)),
        ("GET", "/v1/runs/{run_id}", None),
        ("POST", "/v1/runs/{run_id}/cancel", None),
        ("DELETE", "/v1/runs/{run_id}", None),
        ("GET", "/v1/admin/policies/{agent}", None),
        ("PUT", "/v1/admin/policies/{agent}", b'{"max_actions_per_hour": 1}'),
        ("DELETE", "/v1/admin/policies/{agent}", None),
    ]
    failures = []
    try:
        fleet.start_api()
        for method, path, raw in calls:
            params = {"run_id": "ab" * 16} if "{run_id}" in path else {}  # a well-formed id: Redis is asked
            params |= {"agent": "fuzzed-agent"} if "{agent}" in path else {}
            try:
                resp = send(fleet, api_schema, method, path, raw_body=raw, key=key_for(path), checks=checks,
                            path_parameters=params)  # fmt: skip
                assert resp.status_code == 503, resp.text
            except AssertionError as exc:  # collect all, so the report names every one
                failures.append(f"{method} {path}: {exc}")
    finally:
        fleet.close()
        server.close()
    assert not failures, "\n\n".join(failures)
