"""The `fleet` command: starts the fleet's processes and operates a running fleet.

It sits above `api` and `worker` and imports both; neither imports it.
"""
