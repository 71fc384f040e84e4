"""Tests of the tool gateway (worker/gateway/): admission, limits, breaker, tool pool, writes."""
