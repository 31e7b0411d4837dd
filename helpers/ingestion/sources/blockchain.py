"""The live source: polls blockchain.com's unconfirmed-transactions endpoint.

The API returns the ~100 most recent mempool transactions per call, so
consecutive polls overlap; deduplication is the consumer's job (``hash_keys``).
Rate limits are unpublished and 429s happen, hence backoff with full jitter.
"""
from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import Counter
from datetime import timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np

from helpers.core.events import EventBatch, empty_events, validate_transactions

DEFAULT_URL = "https://blockchain.info/unconfirmed-transactions?format=json"
MAX_BACKOFF_EXPONENT = 32  # 2**attempt stays a float; any cap in use is reached long before

log = logging.getLogger("helpers.ingestion.sources.blockchain")


def parse_response(body: str | bytes, now: float | None = None) -> tuple[np.ndarray, Counter]:
    """Validated events and malformed counts from one API response body; never raises.

    Shared with replay, so a recording is judged exactly as the live response was.
    """
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # ValueError covers bad JSON and bad UTF-8
        return empty_events(), Counter({"response: not JSON": 1})
    if not isinstance(document, dict) or "txs" not in document:
        return empty_events(), Counter({"txs: missing": 1})
    return validate_transactions(document["txs"], now)


def retry_after_seconds(header: str | None, now: float) -> float | None:
    """Seconds a Retry-After header asks for (delay-seconds or an HTTP date); None if absent or unreadable."""
    if not header:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:  # "-0000" parses naive; HTTP dates are always UTC
        moment = moment.replace(tzinfo=timezone.utc)
    return max(0.0, moment.timestamp() - now)


def _is_body_error(malformed: Counter) -> bool:
    return any(reason.startswith(("response:", "txs:")) for reason in malformed)


def _end_partial_line(path: Path) -> None:
    """Terminate a line a crash left half-written, so the next record is not glued to it."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb+") as recording:
        recording.seek(-1, 2)
        if recording.read(1) != b"\n":
            recording.write(b"\n")


def append_record(path: Path, fetched_at: float, body: str) -> None:
    """One JSON line per response, for :class:`~helpers.ingestion.sources.replay.ReplaySource`."""
    # Append and close per line: a crash loses at most the line being written.
    with path.open("a", encoding="utf-8") as recording:
        recording.write(json.dumps({"fetched_at": fetched_at, "body": body}) + "\n")


class BlockchainPoller:
    """Polls the API every ``interval_s``; backs off on 429, 5xx, timeouts and connection errors."""

    name = "blockchain"

    def __init__(
        self,
        url: str = DEFAULT_URL,
        interval_s: float = 15.0,
        timeout_s: float = 10.0,
        backoff_base_s: float = 1.0,
        backoff_cap_s: float = 300.0,
        record_to: Path | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.url = url
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.record_to = Path(record_to) if record_to is not None else None
        self.rng = rng or random.Random()
        self._attempt = 0  # consecutive retryable failures
        self.stats: dict = {
            "polls": 0,
            "ok": 0,
            "errors": Counter(),
            "backoff_seconds_total": 0.0,
            "last_error": None,
        }

    def batches(self, stop: threading.Event, resume_from: str | None = None) -> Iterator[EventBatch]:
        """Yield one batch per 200 response until ``stop`` is set.

        ``resume_from`` is ignored: the API only shows the current mempool, there is no history to resume.
        """
        if self.record_to is not None:
            self.record_to.parent.mkdir(parents=True, exist_ok=True)
            _end_partial_line(self.record_to)
        log.info("polling %s every %.1f s", self.url, self.interval_s)
        with httpx.Client(timeout=self.timeout_s) as client:
            while not stop.is_set():
                batch, delay = self._poll(client)
                if batch is not None:
                    yield batch
                if stop.wait(delay):
                    return

    def _poll(self, client: httpx.Client) -> tuple[EventBatch | None, float]:
        """One request: the batch it produced, if any, and how long to wait before the next."""
        self.stats["polls"] += 1
        try:
            response = client.get(self.url)
        except httpx.TimeoutException as exc:  # before TransportError: it is a subclass
            return None, self._backoff("timeout", repr(exc), retry_after=None)
        except httpx.TransportError as exc:  # refused, reset, DNS, protocol errors
            return None, self._backoff("connect", repr(exc), retry_after=None)
        status = response.status_code
        if status == 429 or status >= 500:
            retry_after = retry_after_seconds(response.headers.get("Retry-After"), time.time())
            return None, self._backoff(f"http_{status}", response.reason_phrase, retry_after)
        if status != 200:
            # Not a rate limit or an outage: retrying sooner would not help, so keep the rhythm.
            self._record_error(f"http_{status}", response.reason_phrase)
            log.warning("HTTP %d from %s; next poll in %.1f s", status, self.url, self.interval_s)
            return None, self.interval_s
        self._attempt = 0
        return self._batch_from(response.text), self.interval_s

    def _batch_from(self, body: str) -> EventBatch:
        fetched_at = time.time()
        if self.record_to is not None:
            append_record(self.record_to, fetched_at, body)
        events, malformed = parse_response(body, now=fetched_at)
        if _is_body_error(malformed):
            self._record_error("bad_json", ", ".join(malformed))
            log.warning("unusable 200 body from %s: %s", self.url, dict(malformed))
        else:
            self.stats["ok"] += 1
        return EventBatch(events, fetched_at=fetched_at, malformed=malformed, source_pos=None)

    def _backoff(self, kind: str, detail: str, retry_after: float | None) -> float:
        """Full-jitter exponential delay, never shorter than the server's Retry-After nor the poll interval
        (retrying faster than the normal rhythm would only hit a rate-limited API harder)."""
        ceiling = min(self.backoff_cap_s, self.backoff_base_s * 2 ** min(self._attempt, MAX_BACKOFF_EXPONENT))
        delay = max(self.rng.uniform(0, ceiling), retry_after or 0.0, self.interval_s)
        self._attempt += 1
        self._record_error(kind, detail)
        self.stats["backoff_seconds_total"] += delay
        log.warning("%s from %s (%s); retry %d in %.1f s", kind, self.url, detail, self._attempt, delay)
        return delay

    def _record_error(self, kind: str, detail: str) -> None:
        self.stats["errors"][kind] += 1
        self.stats["last_error"] = f"{kind}: {detail}"
