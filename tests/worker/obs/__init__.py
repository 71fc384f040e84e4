"""Tests of observability (worker/obs/): logs, redaction, metrics, traces, heartbeats."""
