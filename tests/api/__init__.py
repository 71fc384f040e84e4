"""Tests of the HTTP API (api/): its contract against real `fleet api` processes, and its units."""
