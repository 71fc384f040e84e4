"""What the fleet says about itself: log lines (logs.py) and their redaction (redact.py), logging
and Sentry set up per process (telemetry.py), the worker's liveness file (heartbeat.py), and the
OpenTelemetry spans of a run (tracing.py, exported by tracing_export.py)."""
