"""Tests of the operator's controls (worker/control/): kill switches, approvals, rollouts."""
