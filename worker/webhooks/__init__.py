"""Signed webhooks of runs: a run may carry `"webhook": {"url", "events"}`, and each subscribed
event (`end`, `approval_requested`) is POSTed to the URL, signed, at least once.

The path of an event: the script that records it also writes a pending delivery
(`outbox`: a hash and two sorted-set entries); each agent worker's main process claims due
deliveries and sends one `fleet.deliver_webhook` message per attempt on the `webhooks` queue,
which tool workers serve; the tool worker POSTs once and settles the delivery: done, or due again
after the next backoff (`delivery`). Waiting for a retry holds nothing but Redis entries.

- `target`: which URLs are allowed (checked at submit and again before each attempt);
- `signing`: `X-Fleet-Signature` and how a receiver verifies it;
- `outbox`: the Redis side (enqueue, claim, settle) and the claiming `Scheduler`;
- `delivery`: one attempt on a tool worker.
"""
