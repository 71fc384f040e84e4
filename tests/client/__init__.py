"""Tests of the Python client (client/, import `agentfleet_client`)."""
