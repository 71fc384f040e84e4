"""Tests of the built-in agents (worker/agents/)."""
