"""The Prometheus endpoint: a daemon's own figures, read when scraped, served from its event loop.

A daemon hands ``MetricsServer`` a function that builds metric families from the counters it
already keeps (``prometheus_client``'s custom-collector pattern): nothing is counted twice, and
nothing is kept between scrapes. The registry is the daemon's own (no process or platform
collectors), and the server answers ``GET /metrics`` on the configured address only.

What a daemon reports here is aggregate, as in its status: no address, key, credential or
session index appears in a label or a value (tests/e2e/vpn/test_monitoring.py scrapes a live
deployment for them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

Families = Callable[[], Iterable[Metric]]


Value = float | Mapping[str, float]
"""One sample's value, or values by the one label's value."""


def family(kind: str, name: str, doc: str, value: Value, label: str = "") -> Metric:
    """A ``counter`` or ``gauge`` family: one sample, or one per value of ``label``."""
    cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
    if not isinstance(value, Mapping):
        return cls(name, doc, value=float(value))
    metric = cls(name, doc, labels=[label])
    for key in sorted(value):
        metric.add_metric([key], float(value[key]))
    return metric


def families(
    prefix: str, rows: Iterable[tuple[str, str, str, Value] | tuple[str, str, str, Value, str]]
) -> list[Metric]:
    """``family`` for each (kind, name, doc, value[, label]), the name after ``prefix``."""
    return [family(kind, prefix + name, doc, *rest) for kind, name, doc, *rest in rows]


DROP_NAMES = {
    "client-to-client-dropped": "client-to-client",
    "tun-no-route": "no-route",
    "tun-write-error": "tun-write-error",
    "tx-no-keypair": "no-keypair",
    "tcp-too-many": "tcp-too-many",
    "queue-full": "queue-full",
}
"""Counters that count dropped packets without the ``drop-`` prefix, and the reason they stand for."""


def split_counters(counters: Mapping[str, int]) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """A daemon's counters as (drops by reason, refusals by reason, other events by name).

    The names are the fixed strings the code counts under, never data from the network."""
    drops: dict[str, int] = {}
    refused: dict[str, int] = {}
    events: dict[str, int] = {}
    for name, value in counters.items():
        if name.startswith("drop-"):
            drops[name[5:]] = drops.get(name[5:], 0) + value
        elif name in DROP_NAMES:
            drops[DROP_NAMES[name]] = drops.get(DROP_NAMES[name], 0) + value
        elif name.startswith("refused-"):
            refused[name[8:]] = refused.get(name[8:], 0) + value
        else:
            events[name] = value
    return drops, refused, events


class _Figures(Collector):
    def __init__(self, families: Families) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families()

    def describe(self) -> Iterable[Metric]:
        return ()  # nothing collected at registration: the daemon may not have started yet


class MetricsServer:
    """``GET /metrics`` on ``address`` (host, port), answered from ``families`` at each scrape."""

    def __init__(self, address: tuple[str, int], families: Families) -> None:
        self.address = address
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Figures(families))
        self._runner: web.AppRunner | None = None

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def _handle(self, request: web.Request) -> web.Response:
        return web.Response(body=self.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._handle)
        # access_log=None: a scraper's address has no place in the daemon's log.
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        host, port = self.address
        await web.TCPSite(runner, host, port, reuse_address=True).start()
        self._runner = runner

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()


__all__ = ["Metric", "MetricsServer", "Value", "families", "family", "split_counters"]
