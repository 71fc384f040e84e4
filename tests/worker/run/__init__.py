"""Tests of a run's path (worker/run/): store, leases, timers, budgets, the agent loop, recovery."""
