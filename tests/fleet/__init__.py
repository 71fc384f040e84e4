"""The fleet as a whole, end to end against real processes: smoke, chaos, servers, Sentinel, leaks."""
