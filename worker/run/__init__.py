"""The path of a run: the loop, its guard, the run record, leases, keepers and timers."""
