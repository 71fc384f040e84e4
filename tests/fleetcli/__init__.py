"""Tests of the `fleet` command (fleetcli/), run as a user runs it."""
