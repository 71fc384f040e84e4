"""The tool gateway: the call state machine (calls), its ordered checks (checks), and the
tool worker's side (executor, pool)."""
