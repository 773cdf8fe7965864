"""The sans-I/O RPC engine: see `node.engine.core`."""

from node.engine.bans import Ban, BanList
from node.engine.calls import OnReply
from node.engine.core import Engine
from node.engine.handlers import PendingWrite, Request, RequestHandlers
from node.engine.limits import Limits
from node.engine.stats import LatencyHistogram, NodeStats

__all__ = [
    "Ban",
    "BanList",
    "Engine",
    "LatencyHistogram",
    "Limits",
    "NodeStats",
    "OnReply",
    "PendingWrite",
    "Request",
    "RequestHandlers",
]
