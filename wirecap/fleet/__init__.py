"""Shipping capture frames through NATS JetStream and collecting them centrally.

``wirecap ship DIR --to nats://...`` (:mod:`wirecap.fleet.shipper`) follows the closed frames of a
live capture directory and publishes each one, its bytes as written, to a JetStream stream;
``wirecap collect nats://... --out DIR`` (:mod:`wirecap.fleet.collector`) consumes the stream with
a durable pull consumer and writes capture segments that every wirecap command reads as one
capture. The local files stay the source of truth: a proxy never waits on the network.

nats-py is asyncio-only, so the shipper and the collector run on asyncio in processes of their own
(the proxy starts the shipper beside itself, :mod:`wirecap.fleet.beside`). Their file work and
decisions are plain functions (:mod:`~wirecap.fleet.source`, :mod:`~wirecap.fleet.central`) that
know nothing of NATS. This package imports capture/ only, and nats-py only where it talks to NATS.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import ModuleType

#: What to install when nats-py is missing.
EXTRA_HINT = "pip install 'wirecap[fleet]'"


class FleetError(Exception):
    """A problem the user can fix (bad settings, nats-py missing): a one-line message."""


def require_nats() -> ModuleType:
    """The ``nats`` module, or :class:`FleetError` naming the extra that brings it."""
    try:
        return importlib.import_module("nats")
    except ImportError:
        raise FleetError(f"shipping and collecting need nats-py: {EXTRA_HINT}") from None
