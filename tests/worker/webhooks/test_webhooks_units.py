"""Unit tests of signed webhooks (worker/webhooks/): the signature, the retry schedule, the
outbox's scripts on fakeredis with Lua, the run store's `end` hook, the target checks and one
attempt's POST against a loopback server. Delivery through real processes: test_webhooks.py."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest

from tests.harness import ROOT, CountingServer
from worker.keys import Keys
from worker.run.store import Budgets, RunStore, public_view
from worker.settings import ConfigError, Settings, parse_webhook_secrets
from worker.tools.http_client import close_shared_client
from worker.webhooks import delivery, signing, target
from worker.webhooks.outbox import (
    CLAIM_BATCH,
    JITTER_RATIO,
    LUA_ENQUEUE,
    Claimed,
    Outbox,
    Outcome,
    Scheduler,
    retry_delay_s,
)

KEYS = Keys("fleet")
SECRET = "whsec-tenant-one-0123456789"
BUDGETS = Budgets(max_steps=5, max_tool_calls=2, max_seconds=30)
END_HOOK = target.Webhook("https://hooks.example.com/in?token=abc", ("end",)).to_json()


@pytest.fixture
def outbox(r: fakeredis.FakeRedis) -> Outbox:
    return Outbox(r, KEYS)


def settings(http_allow_hosts: tuple[str, ...] = (), **webhooks: Any) -> Settings:
    """Settings with these webhook settings; `http_allow_hosts`: the SSRF guard's exceptions
    (tools.http.allow_hosts), which webhooks share with http.get."""
    return Settings(
        webhooks={"allow_hosts": ["hooks.example.com"], **webhooks},
        tools={"http": {"allow_hosts": list(http_allow_hosts)}},
    )


def new_run(store: RunStore, run_id: str = "r1", webhook: str | None = END_HOOK) -> None:
    store.create(
        run_id, tenant="t1", agent="scripted", input={}, budgets=BUDGETS, metadata={}, webhook=webhook
    )


# LUA_ENQUEUE as the scripts that record events call it (the end script, the approval's ask)
ENQUEUE = (
    LUA_ENQUEUE
    + """
webhook_enqueue(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
"""
)
BOTH_HOOK = target.Webhook("https://hooks.example.com/in", ("end", "approval_requested")).to_json()


def enqueue_for(
    r: fakeredis.FakeRedis, webhook: str | None, event: str = "approval_requested", now: float = 1000.0
) -> str:
    """Run the enqueue for run r1 holding `webhook` (None: no webhook field); the delivery's id."""
    if webhook is not None:
        r.hset(KEYS.run("r1"), "webhook", webhook)
    delivery_id = uuid.uuid4().hex
    r.eval(
        ENQUEUE, 4, KEYS.run("r1"), KEYS.webhook(delivery_id), KEYS.webhooks_due(), KEYS.webhooks_born(),
        event, delivery_id, "r1", "t1", repr(now), json.dumps({"call_id": "c1"}),
    )  # fmt: skip
    return delivery_id


def enqueue(r: fakeredis.FakeRedis, event: str = "approval_requested", now: float = 1000.0) -> str:
    return enqueue_for(r, BOTH_HOOK, event, now)


# -- the signature --------------------------------------------------------------------------------


def test_the_signature_is_the_hmac_sha256_of_ts_dot_body_with_the_tenants_secret() -> None:
    body = b'{"id":"e1"}'
    header = signing.signature_header(SECRET, body, ts=1700000000)
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert signing.verify(SECRET, header, body, now=1700000000 + 299)


@pytest.mark.parametrize(
    ("secret", "body", "now"),
    [
        ("another-secret-0123456789", b'{"id":"e1"}', 1700000000),  # wrong secret
        (SECRET, b'{"id":"e2"}', 1700000000),  # body changed
        (SECRET, b'{"id":"e1"}', 1700000000 + 301),  # older than the tolerance: a replay
        (SECRET, b'{"id":"e1"}', 1700000000 - 301),  # from the future
    ],
)
def test_verify_refuses_another_secret_a_changed_body_and_a_stale_timestamp(
    secret: str, body: bytes, now: int
) -> None:
    header = signing.signature_header(SECRET, b'{"id":"e1"}', ts=1700000000)
    assert not signing.verify(secret, header, body, now=now)


def test_the_readmes_receiver_snippet_accepts_a_delivery_and_refuses_a_forgery() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Webhooks") :]
    snippet = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert snippet is not None
    scope: dict[str, Any] = {}
    exec(snippet.group(1), scope)
    body = b'{"id":"e1","event":"end"}'
    header = signing.signature_header(SECRET, body)
    assert scope["verify"](SECRET, header, body)
    assert not scope["verify"](SECRET, header, body + b" ")
    assert not scope["verify"](SECRET, signing.signature_header(SECRET, body, ts=1700000000), body)


@pytest.mark.parametrize("header", ["", "t=abc,v1=00", "v1=00", "t=1700000000"])
def test_verify_refuses_a_malformed_header(header: str) -> None:
    assert not signing.verify(SECRET, header, b"{}", now=1700000000)


# -- the retry schedule ---------------------------------------------------------------------------


def test_retries_follow_the_backoff_list_and_its_last_entry_repeats() -> None:
    backoff = [1.0, 5.0, 30.0]
    assert [retry_delay_s(n, backoff, rng=lambda: 0.0) for n in (1, 2, 3, 4, 9)] == [1, 5, 30, 30, 30]


def test_jitter_adds_at_most_a_quarter_of_the_backoff() -> None:
    assert retry_delay_s(2, [1.0, 8.0], rng=lambda: 0.999999) == pytest.approx(
        8.0 * (1 + JITTER_RATIO), rel=1e-5
    )
    delays = {retry_delay_s(1, [4.0]) for _ in range(50)}
    assert all(4.0 <= d <= 4.0 * (1 + JITTER_RATIO) for d in delays) and len(delays) > 1


def test_the_backoff_list_must_be_non_empty_and_positive() -> None:
    for bad in ([], [1.0, 0.0], [-1.0]):
        with pytest.raises(ValueError, match="retry_backoff_s"):
            Settings(webhooks={"retry_backoff_s": bad})
    assert Settings().webhooks.retry_backoff_s == [1, 5, 30, 300, 1800]
    assert Settings().webhooks.max_age_s == 86400


# -- the outbox's scripts -------------------------------------------------------------------------


def test_enqueue_writes_the_delivery_and_both_zset_entries(r: fakeredis.FakeRedis, outbox: Outbox) -> None:
    delivery_id = enqueue(r)
    raw = outbox.load(delivery_id) or {}
    assert (raw["run_id"], raw["tenant"], raw["event"], raw["url"]) == (
        "r1",
        "t1",
        "approval_requested",
        "https://hooks.example.com/in",
    )
    assert json.loads(raw["data"]) == {"call_id": "c1"} and raw["attempts"] == "0"
    assert r.zscore(KEYS.webhooks_due(), delivery_id) == 1000.0
    assert r.zscore(KEYS.webhooks_born(), delivery_id) == 1000.0


@pytest.mark.parametrize(
    "webhook", [None, "", "not json", json.dumps({"url": "https://hooks.example.com/", "events": ["end"]})]
)
def test_enqueue_queues_nothing_without_a_webhook_subscribed_to_the_event(
    r: fakeredis.FakeRedis, webhook: str | None
) -> None:
    enqueue_for(r, webhook)
    assert r.zcard(KEYS.webhooks_due()) == 0 and not r.keys("fleet:webhook:*")


def test_a_claim_moves_the_delivery_ahead_so_no_other_scheduler_takes_it(
    outbox: Outbox, r: fakeredis.FakeRedis
) -> None:
    delivery_id = enqueue(r, now=1000.0)
    assert outbox.claim_due(lead_s=40, max_age_s=3600, now=999.0) == []  # not due yet
    assert outbox.claim_due(lead_s=40, max_age_s=3600, now=1000.0) == [Claimed(delivery_id, "1")]
    assert outbox.claim_due(lead_s=40, max_age_s=3600, now=1039.0) == []
    assert r.zscore(KEYS.webhooks_due(), delivery_id) == 1040.0
    # the claim lapsed (its send was lost): claimed again, with a new claim number
    assert outbox.claim_due(lead_s=40, max_age_s=3600, now=1040.0) == [Claimed(delivery_id, "2")]


def test_a_claim_drops_a_delivery_past_max_age_as_expired(outbox: Outbox, r: fakeredis.FakeRedis) -> None:
    delivery_id = enqueue(r, now=1000.0)
    assert outbox.claim_due(lead_s=40, max_age_s=60, now=1060.0) == []
    assert outbox.load(delivery_id) is None
    assert r.zcard(KEYS.webhooks_due()) == 0 and r.zcard(KEYS.webhooks_born()) == 0
    assert outbox.counts()["expired"] == 1


def test_a_claim_forgets_an_entry_whose_delivery_hash_is_gone(outbox: Outbox, r: fakeredis.FakeRedis) -> None:
    delivery_id = enqueue(r, now=1000.0)
    r.delete(KEYS.webhook(delivery_id))
    assert outbox.claim_due(lead_s=40, max_age_s=3600, now=1000.0) == []
    assert r.zcard(KEYS.webhooks_due()) == 0 and r.zcard(KEYS.webhooks_born()) == 0


def test_claims_go_in_batches_until_none_is_due(outbox: Outbox, r: fakeredis.FakeRedis) -> None:
    for _ in range(CLAIM_BATCH + 3):
        enqueue(r, now=1.0)
    sent: list[Claimed] = []
    assert Scheduler(outbox, sent.append, lead_s=40, max_age_s=10**10).tick() == CLAIM_BATCH + 3
    assert len({c.delivery_id for c in sent}) == CLAIM_BATCH + 3


def test_settle_delivered_drops_the_delivery_and_counts_it(outbox: Outbox, r: fakeredis.FakeRedis) -> None:
    delivery_id = enqueue(r)
    (claimed,) = outbox.claim_due(lead_s=40, max_age_s=3600, now=1000.0)
    assert outbox.settle(delivery_id, claimed.claim, Outcome.DELIVERED, "r1") is Outcome.DELIVERED
    assert outbox.load(delivery_id) is None and r.zcard(KEYS.webhooks_born()) == 0
    assert outbox.counts() == {"delivered": 1, "failed": 0, "gone": 0, "expired": 0, "refused": 0}
    assert outbox.backlog(now=2000.0) == (0, 0.0)


def test_settle_failed_sets_the_next_due_time_and_counts_the_attempt(
    outbox: Outbox, r: fakeredis.FakeRedis
) -> None:
    delivery_id = enqueue(r)
    (claimed,) = outbox.claim_due(lead_s=40, max_age_s=3600, now=1000.0)
    assert (
        outbox.settle(delivery_id, claimed.claim, Outcome.FAILED, "r1", next_ts=1005.0, max_age_s=3600)
        is Outcome.FAILED
    )
    assert r.zscore(KEYS.webhooks_due(), delivery_id) == 1005.0
    assert (outbox.load(delivery_id) or {})["attempts"] == "1"
    assert outbox.counts()["failed"] == 1
    assert outbox.backlog(now=1010.0) == (1, 10.0)  # the oldest event's age, not the attempt's


def test_settle_failed_past_max_age_drops_it_as_expired(outbox: Outbox, r: fakeredis.FakeRedis) -> None:
    delivery_id = enqueue(r)
    (claimed,) = outbox.claim_due(lead_s=40, max_age_s=60, now=1000.0)
    assert (
        outbox.settle(delivery_id, claimed.claim, Outcome.FAILED, "r1", next_ts=1060.0, max_age_s=60)
        is Outcome.EXPIRED
    )
    assert outbox.load(delivery_id) is None
    assert outbox.counts()["expired"] == 1 and outbox.counts()["failed"] == 0


def test_a_stale_attempt_changes_nothing_unless_it_delivered(outbox: Outbox, r: fakeredis.FakeRedis) -> None:
    delivery_id = enqueue(r)
    outbox.claim_due(lead_s=40, max_age_s=3600, now=1000.0)
    outbox.claim_due(lead_s=40, max_age_s=3600, now=1040.0)  # the first claim lapsed
    assert (
        outbox.settle(delivery_id, "1", Outcome.FAILED, "r1", next_ts=1001.0, max_age_s=3600) is Outcome.STALE
    )
    assert r.zscore(KEYS.webhooks_due(), delivery_id) == 1080.0
    assert outbox.settle(delivery_id, "1", Outcome.DELIVERED, "r1") is Outcome.DELIVERED
    assert (
        outbox.settle(delivery_id, "2", Outcome.FAILED, "r1", next_ts=1001.0, max_age_s=3600)
        is Outcome.MISSING
    )


def test_gone_drops_the_delivery_and_the_runs_webhook(
    outbox: Outbox, r: fakeredis.FakeRedis, store: RunStore
) -> None:
    new_run(store)
    delivery_id = enqueue(r)
    (claimed,) = outbox.claim_due(lead_s=40, max_age_s=3600, now=1000.0)
    assert outbox.settle(delivery_id, claimed.claim, Outcome.GONE, "r1") is Outcome.GONE
    assert r.hget(KEYS.run("r1"), "webhook") is None
    store.finish("r1", "succeeded", "finish")  # its end sends nothing now
    assert r.zcard(KEYS.webhooks_due()) == 0 and outbox.counts()["gone"] == 1


def test_a_settle_answer_that_is_no_outcome_raises(outbox: Outbox, r: fakeredis.FakeRedis) -> None:
    outbox._settle = r.register_script("return 'sent'")
    with pytest.raises(ValueError, match="'sent' is not a valid Outcome"):
        outbox.settle(enqueue(r), "1", Outcome.DELIVERED, "r1")


def test_freeze_keeps_the_first_body(outbox: Outbox, r: fakeredis.FakeRedis) -> None:
    delivery_id = enqueue(r)
    assert outbox.freeze_body(delivery_id, "first") == "first"
    assert outbox.freeze_body(delivery_id, "second") == "first"
    r.delete(KEYS.webhook(delivery_id))
    assert outbox.freeze_body(delivery_id, "third") is None and not r.exists(KEYS.webhook(delivery_id))


# -- the run store's end hook ---------------------------------------------------------------------


def test_every_end_of_a_run_with_an_end_webhook_writes_one_delivery(
    store: RunStore, outbox: Outbox, r: fakeredis.FakeRedis
) -> None:
    new_run(store, "done")
    store.start("done", "host:1:a")
    assert store.finish("done", "succeeded", "finish", output="ok")
    assert not store.finish("done", "failed", "error")  # no second end, no second delivery
    new_run(store, "cancelled")
    store.cancel("cancelled")  # a queued run's cancel ends it in its own script
    due = [str(x) for x in r.zrange(KEYS.webhooks_due(), 0, -1)]
    found = sorted((outbox.load(d) or {}).get("run_id", "") for d in due)
    assert found == ["cancelled", "done"]
    raw = outbox.load(due[0]) or {}
    assert raw["event"] == "end" and raw["data"] == "" and raw["tenant"] == "t1"
    assert raw["url"] == "https://hooks.example.com/in?token=abc"


@pytest.mark.parametrize(
    "webhook", [None, target.Webhook("https://hooks.example.com/", ("approval_requested",)).to_json()]
)
def test_a_run_without_an_end_webhook_writes_no_delivery(
    store: RunStore, r: fakeredis.FakeRedis, webhook: str | None
) -> None:
    new_run(store, webhook=webhook)
    assert store.finish("r1", "succeeded", "finish")
    assert r.zcard(KEYS.webhooks_due()) == 0 and not r.keys("fleet:webhook:*")


def test_the_run_shows_its_webhook(store: RunStore) -> None:
    new_run(store)
    view = public_view(store.load("r1") or {})
    assert view["webhook"] == {"url": "https://hooks.example.com/in?token=abc", "events": ["end"]}
    new_run(store, "plain", webhook=None)
    assert "webhook" not in public_view(store.load("plain") or {})


def test_the_end_body_is_the_run_as_the_api_shows_it(
    store: RunStore, outbox: Outbox, r: fakeredis.FakeRedis
) -> None:
    new_run(store)
    store.finish("r1", "succeeded", "finish", output="done")
    (delivery_id,) = [str(x) for x in r.zrange(KEYS.webhooks_due(), 0, -1)]
    raw = outbox.load(delivery_id) or {}
    body = json.loads(delivery.body_of(delivery_id, raw, store.load) or "")
    assert body["id"] == delivery_id and body["event"] == "end" and body["run_id"] == "r1"
    assert body["data"] == public_view(store.load("r1") or {}) and body["created_at"].endswith("Z")
    assert delivery.body_of(delivery_id, raw, lambda _: None) is None  # the run is gone


def test_prepare_fixes_the_body_once_and_skips_a_superseded_claim(
    store: RunStore, outbox: Outbox, r: fakeredis.FakeRedis
) -> None:
    new_run(store)
    store.finish("r1", "succeeded", "finish", output="done")
    (claimed,) = outbox.claim_due(lead_s=40, max_age_s=3600)
    attempt = delivery.prepare(
        outbox, store.load, settings(), {"t1": SECRET}, claimed.delivery_id, claimed.claim
    )
    assert attempt is not None and attempt.url == "https://hooks.example.com/in?token=abc"
    assert SECRET not in repr(attempt)
    assert json.loads(attempt.body)["data"]["output"] == "done"
    r.hset(KEYS.run("r1"), "output", json.dumps("changed"))  # a retry sends the same bytes
    again = delivery.prepare(
        outbox, store.load, settings(), {"t1": SECRET}, claimed.delivery_id, claimed.claim
    )
    assert again is not None and again.body == attempt.body
    assert delivery.prepare(outbox, store.load, settings(), {"t1": SECRET}, claimed.delivery_id, "0") is None


@pytest.mark.parametrize(
    ("allowed", "secrets"), [(["other.example.com"], {"t1": SECRET}), (["hooks.example.com"], {})]
)
def test_a_host_no_longer_allowed_or_a_secret_removed_ends_the_delivery_as_refused(
    store: RunStore, outbox: Outbox, allowed: list[str], secrets: dict[str, str]
) -> None:
    new_run(store)
    store.finish("r1", "succeeded", "finish")
    (claimed,) = outbox.claim_due(lead_s=40, max_age_s=3600)
    s = Settings(webhooks={"allow_hosts": allowed})
    assert delivery.prepare(outbox, store.load, s, secrets, claimed.delivery_id, claimed.claim) is None
    assert outbox.load(claimed.delivery_id) is None and outbox.counts()["refused"] == 1


# -- the target -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "events", "message"),
    [
        ("ftp://hooks.example.com/x", ["end"], "scheme 'ftp' is not http or https"),
        ("https://evil.example.net/x", ["end"], "host 'evil.example.net' is not allowed"),
        ("https://user:pw@hooks.example.com/x", ["end"], "must not hold a user name or password"),
        ("not a url", ["end"], "webhook.url"),
        ("https:///nohost", ["end"], "webhook.url"),
        ("https://hooks.example.com/x", [], "webhook.events: name at least one"),
        ("https://hooks.example.com/x", ["end", "step"], "unknown event 'step'"),
        ("https://" + "a" * 3000 + ".com/", ["end"], "longer than 2048"),
    ],
)
def test_a_bad_webhook_is_refused_with_the_field_named(url: str, events: list[str], message: str) -> None:
    with pytest.raises(target.WebhookRefused, match=message.replace("(", r"\(")):
        target.check(url, events, "t1", settings(), {"t1"})


def test_a_tenant_without_a_secret_gets_no_webhook() -> None:
    with pytest.raises(target.WebhookRefused, match="no webhook secret for this tenant"):
        target.check("https://hooks.example.com/x", ["end"], "t2", settings(), {"t1"})


def test_hosts_are_allowed_for_every_tenant_or_per_tenant_as_the_ssrf_guard_compares_them() -> None:
    s = settings(allow_hosts=["Hooks.Example.com", "[::1]"], tenant_allow_hosts={"t1": ["127.0.0.1"]})
    assert target.check("https://HOOKS.example.com/a", ["end", "end"], "t1", s, {"t1", "t2"}).events == (
        "end",
    )
    assert target.check("http://[::1]:8080/a", ["end"], "t2", s, {"t2"})
    assert target.check("http://127.0.0.1:9/a", ["approval_requested"], "t1", s, {"t1"})
    with pytest.raises(target.WebhookRefused, match="not allowed"):
        target.check("http://127.0.0.1:9/a", ["end"], "t2", s, {"t2"})


# -- secrets --------------------------------------------------------------------------------------


def test_webhook_secrets_parse_per_tenant_and_errors_never_show_a_secret() -> None:
    assert parse_webhook_secrets(f"t1:{SECRET}\n t2 : {SECRET}-2 ,# note") == {
        "t1": SECRET,
        "t2": SECRET + "-2",
    }
    for raw in (f"t1:{SECRET},t1:{SECRET}x", "t1:short-secret", f"t1 {SECRET}", f"bad/tenant:{SECRET}"):
        with pytest.raises(ConfigError) as err:
            parse_webhook_secrets(raw)
        assert SECRET not in str(err.value) and "short-secret" not in str(err.value)


def test_webhook_secrets_come_from_the_environment_or_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv("FLEET_WEBHOOK_SECRETS", f"t1:{SECRET}")
    assert Settings().tenant_webhook_secrets() == {"t1": SECRET}
    assert SECRET not in repr(Settings())
    monkeypatch.delenv("FLEET_WEBHOOK_SECRETS")
    path = tmp_path / "secrets"
    path.write_text(f"t2:{SECRET}\n")
    monkeypatch.setenv("FLEET_WEBHOOK_SECRETS_FILE", str(path))
    assert Settings().tenant_webhook_secrets() == {"t2": SECRET}


# -- one attempt ----------------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[CountingServer]:
    server = CountingServer()
    yield server
    server.close()


def attempt_to(url: str) -> delivery.Attempt:
    return delivery.Attempt("e1", "1", "r1", "end", url, b'{"id":"e1"}', SECRET, 0)


def post(attempt: delivery.Attempt, s: Settings) -> tuple[Outcome, str]:
    async def once() -> tuple[Outcome, str]:
        try:
            return await delivery.post(attempt, s)
        finally:
            await close_shared_client()

    return asyncio.run(once())


@pytest.mark.parametrize(
    ("path", "outcome"),
    [("/ok", Outcome.DELIVERED), ("/status/204", Outcome.DELIVERED), ("/status/410", Outcome.GONE),
     ("/status/500", Outcome.FAILED), ("/status/404", Outcome.FAILED), ("/status/302", Outcome.FAILED)],
)  # fmt: skip
def test_one_attempt_is_delivered_on_2xx_gone_on_410_and_failed_otherwise(
    receiver: CountingServer, path: str, outcome: Outcome
) -> None:
    s = settings(("127.0.0.1",), allow_hosts=["127.0.0.1"])
    assert post(attempt_to(receiver.url(path)), s)[0] is outcome
    (request,) = receiver.requests
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert request["method"] == "POST" and request["body"] == '{"id":"e1"}'
    assert headers["x-fleet-event-id"] == "e1" and headers["content-type"] == "application/json"
    assert signing.verify(SECRET, headers["x-fleet-signature"], b'{"id":"e1"}')


def test_a_timeout_and_a_refused_connection_are_failures_to_retry(receiver: CountingServer) -> None:
    s = settings(("127.0.0.1",), allow_hosts=["127.0.0.1"], timeout_s=0.3)
    outcome, detail = post(attempt_to(receiver.url("/sleep/2")), s)
    assert (outcome, detail.split(":")[0]) == (Outcome.FAILED, "timeout")
    closed = CountingServer()
    closed.close()
    outcome, detail = post(attempt_to(closed.url("/ok")), s)
    assert (outcome, detail.split(":")[0]) == (Outcome.FAILED, "http_error")


def test_a_webhook_host_must_pass_the_ssrf_guard_of_http_get_too(receiver: CountingServer) -> None:
    s = settings(allow_hosts=["127.0.0.1"])  # allowed for webhooks, not past the private-address block
    outcome, detail = post(attempt_to(receiver.url("/ok")), s)
    assert outcome is Outcome.FAILED and detail.startswith("denied: address 127.0.0.1"), detail
    assert "tools.http.allow_hosts" in detail
    assert receiver.requests == [], "the guard let a request to a loopback address through"
