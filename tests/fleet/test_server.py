"""Which server the integration tests run against: redis-server, or the Valkey that .ci/run's
second pass names in FLEET_TEST_REDIS_SERVER. A Valkey pass that silently started redis-server
would prove nothing, so this checks the server itself says what it is."""

from __future__ import annotations

import os
from pathlib import Path

from tests.harness import RedisServer, redis_server_binary


def test_the_tests_start_the_server_that_FLEET_TEST_REDIS_SERVER_names(redis_server: RedisServer) -> None:
    info = redis_server.client().info("server")
    chosen = os.environ.get("FLEET_TEST_REDIS_SERVER")
    if chosen:
        assert redis_server_binary() == chosen
    if "valkey" in Path(redis_server_binary()).name:
        assert info.get("server_name") == "valkey", info
        assert int(str(info["valkey_version"]).split(".")[0]) >= 7
    else:
        assert "valkey_version" not in info, info
        assert "redis_version" in info
