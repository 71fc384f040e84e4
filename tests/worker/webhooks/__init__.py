"""Tests of signed webhooks (worker/webhooks/)."""
