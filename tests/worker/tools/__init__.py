"""Tests of the built-in tools (worker/tools/)."""
