"""Prometheus metrics of a running node, served at ``http://HOST:PORT/metrics``.

Values are read from the node when scraped (nothing is added to the datagram path). The HTTP
endpoint runs on the node's own event loop, so a scrape never races the counters it reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from node.server import DHTNode

log = logging.getLogger(__name__)

_MAX_REQUEST = 8192


class NodeCollector(Collector):
    """Reads a `DHTNode`'s counters at scrape time."""

    def __init__(self, node: DHTNode) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        """The node's metrics, as Prometheus families."""
        node = self.node
        if node.protocol is None:
            return
        stats = node.stats
        families = [
            (
                "dht_rpc_requests_received",
                "RPC requests answered, by RPC",
                "rpc",
                stats.requests_in,
            ),
            ("dht_rpc_requests_sent", "RPC requests sent, by RPC", "rpc", stats.requests_out),
            ("dht_datagrams_dropped", "Datagrams dropped, by reason", "reason", stats.dropped),
            (
                "dht_records_refused",
                "Records refused by the store, by reason",
                "reason",
                stats.refused,
            ),
        ]
        for name, documentation, label, counter in families:
            family = CounterMetricFamily(name, documentation, labels=[label])
            for key, value in sorted(counter.items()):
                family.add_metric([key], value)
            yield family
        yield CounterMetricFamily(
            "dht_rpc_timeouts", "Requests that got no answer in time", value=stats.timeouts
        )
        histogram = stats.lookup_seconds
        buckets = []
        cumulative = 0
        for bound, count in zip(histogram.bounds, histogram.counts, strict=False):
            cumulative += count
            buckets.append((repr(bound), cumulative))
        buckets.append(("+Inf", histogram.count))
        yield HistogramMetricFamily(
            "dht_lookup_seconds", "Duration of lookups", buckets=buckets, sum_value=histogram.total
        )
        store, table = node.store, node.table
        yield GaugeMetricFamily(
            "dht_records_held", "Records held", value=len(store) if store is not None else 0
        )
        yield GaugeMetricFamily(
            "dht_record_bytes_held",
            "Bytes of records held",
            value=store.bytes_used if store is not None else 0,
        )
        yield GaugeMetricFamily(
            "dht_routing_table_size",
            "Contacts in the routing table",
            value=len(table) if table is not None else 0,
        )


class MetricsServer:
    """A minimal HTTP endpoint for ``GET /metrics``, on the node's event loop."""

    def __init__(self, node: DHTNode, *, host: str = "127.0.0.1", port: int = 9469) -> None:
        self.host = host
        self.port = port
        self.registry = CollectorRegistry()
        self.registry.register(NodeCollector(node))
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Start listening; returns the bound port."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("metrics listening on http://%s:%d/metrics", self.host, self.port)
        return self.port

    async def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            server, self._server = self._server, None
            server.close()
            await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.close()
            return
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split()
        if len(parts) >= 2 and parts[0] == "GET" and parts[1].split("?")[0] == "/metrics":
            body = generate_latest(self.registry)
            status = "200 OK"
            content_type = "text/plain; version=0.0.4; charset=utf-8"
        else:
            body, status, content_type = b"not found\n", "404 Not Found", "text/plain"
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("latin-1")
            + body
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()
