"""agentfleet-client: submit agent runs to an agentfleet, wait for them, read, cancel and follow them.

    from agentfleet_client import Fleet

    with Fleet() as fleet:  # FLEET_API_URL, FLEET_API_KEY
        run = fleet.submit("scripted", {"plan": [{"final": "hi"}]})
        run = fleet.wait(run.id, timeout=60)
        print(run.status, run.output)

`AsyncFleet` has the same calls for asyncio. Errors are `FleetError` subclasses, one per status.
"""

from agentfleet_client._base import __version__
from agentfleet_client.async_client import AsyncFleet
from agentfleet_client.client import Fleet
from agentfleet_client.errors import (
    AuthenticationError,
    BadRequestError,
    ConflictError,
    FleetConnectionError,
    FleetError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
)
from agentfleet_client.models import (
    TERMINAL_STATUSES,
    Approval,
    ErrorInfo,
    Event,
    Run,
    RunPage,
    Usage,
    UsageReport,
    UsageRow,
)
from agentfleet_client.retry import NO_RETRIES, Retries
from agentfleet_client.sse import SSEParser

__all__ = [
    "NO_RETRIES",
    "TERMINAL_STATUSES",
    "Approval",
    "AsyncFleet",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "ErrorInfo",
    "Event",
    "Fleet",
    "FleetConnectionError",
    "FleetError",
    "InvalidRequestError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "Retries",
    "Run",
    "RunPage",
    "SSEParser",
    "ServerError",
    "ServiceUnavailableError",
    "Usage",
    "UsageReport",
    "UsageRow",
    "__version__",
]
