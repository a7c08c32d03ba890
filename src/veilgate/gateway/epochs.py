"""The gateway's copy of the issuer's epoch keys, kept in step with the provider document.

Refreshed after each epoch starts (new keys) and at least every 5 minutes, with backoff while the
provider is unreachable. A document that contradicts one seen before (a split view) is refused by
the provider client and the keys seen before stay in force.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable

from veilgate.credentials.epochs import EpochVerifier
from veilgate.provider.client import ProviderClient, ProviderInconsistent, ProviderUnavailable

log = logging.getLogger("veilgate.gateway")

REFRESH_AT_MOST = 300.0
"""Seconds between two refreshes at most, also within an epoch."""
RETRY_MAX = 60.0


class EpochSync:
    """Loads epoch keys from the provider into ``epochs``; ``on_change`` runs when they changed."""

    def __init__(
        self,
        provider: ProviderClient,
        epochs: EpochVerifier,
        counters: Counter[str],
        on_change: Callable[[], None],
    ) -> None:
        self.provider = provider
        self.epochs = epochs
        self.counters = counters
        self.on_change = on_change
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load the keys once, then keep refreshing in the background."""
        loaded = await self.refresh()
        self._task = asyncio.ensure_future(self._run(loaded))

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def refresh(self) -> bool:
        """Load the issuer's epoch keys from the provider document; False if it is unreachable."""
        try:
            fetched = await self.provider.fetch_document(time.time())
        except ProviderInconsistent:
            # Logged as an error by the provider client; the keys seen before stay in force.
            self.counters["provider-inconsistent"] += 1
            return False
        except ProviderUnavailable as exc:
            self.counters["provider-unreachable"] += 1
            log.warning("provider document not refreshed: %s", exc)
            return False
        doc = fetched.document
        before = self.epochs.epoch_keys()
        self.epochs.epoch_length = doc.epoch_length
        self.epochs.update(doc.epochs)
        log.info("issuer epoch keys loaded: epochs %s", ", ".join(str(e.epoch) for e in doc.epochs))
        if self.epochs.epoch_keys() != before:
            self.on_change()
        return True

    async def _run(self, ok: bool) -> None:
        retry = 1.0
        while True:
            if ok:
                length = self.epochs.epoch_length
                now = time.time()
                await asyncio.sleep(min(REFRESH_AT_MOST, (int(now // length) + 1) * length - now + 1.0))
            ok = await self.refresh()
            if not ok:
                await asyncio.sleep(retry)
                retry = min(retry * 2, RETRY_MAX)
            else:
                retry = 1.0


__all__ = ["EpochSync"]
