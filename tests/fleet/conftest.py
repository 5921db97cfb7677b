"""A real nats-server with JetStream for the fleet tests, and the shipper and collector as the
processes users run.

nats-server (Debian's package ``nats-server``) runs on 127.0.0.1 on a free port with its store in
the test's temporary directory. Without it these tests are skipped, unless
``WIRECAP_REQUIRE_NATS=1`` (CI) makes that a failure.
"""

from __future__ import annotations

import os

import pytest
from natsfleet import Child, NatsServer, nats_binary


@pytest.fixture
async def nats_server(tmp_path):
    """A started :class:`NatsServer` (``nats_server.extra`` cannot be changed once started)."""
    if nats_binary() is None:
        if os.environ.get("WIRECAP_REQUIRE_NATS"):
            pytest.fail("nats-server is required (WIRECAP_REQUIRE_NATS is set) but not installed")
        pytest.skip("nats-server is not installed (apt-get install nats-server)")
    server = NatsServer(tmp_path / "jetstream", [])
    await server.start()
    yield server
    await server.kill()


@pytest.fixture
def children(tmp_path):
    """Starts ``wirecap`` processes; whatever is still running at the end is killed."""
    started: list[Child] = []

    def start(*args: str) -> Child:
        child = Child(list(args), tmp_path / f"child{len(started)}.log").start()
        started.append(child)
        return child

    yield start
    for child in started:
        if child.process is not None and child.process.poll() is None:
            child.process.kill()
            child.process.wait()
