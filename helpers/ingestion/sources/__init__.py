"""Sources of transactions: one interface, three implementations.

A source yields :class:`~helpers.core.events.EventBatch` objects until it is
exhausted or ``stop`` is set. Every wait inside a source is ``stop.wait(...)``
so a SIGTERM stops the service within one poll.

- :class:`~helpers.ingestion.sources.blockchain.BlockchainPoller`: the live blockchain.com API
- :class:`~helpers.ingestion.sources.simulator.Simulator`: seeded, Bitcoin-like, with drift injection
- :class:`~helpers.ingestion.sources.replay.ReplaySource`: recorded API responses, played back offline
"""
from __future__ import annotations

import threading
from typing import Iterator, Protocol

from helpers.core.events import EventBatch


class Source(Protocol):
    name: str

    def batches(self, stop: threading.Event, resume_from: str | None = None) -> Iterator[EventBatch]:
        """Yield batches; ``resume_from`` is the ``source_pos`` of the last batch stored."""
        ...
