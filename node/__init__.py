"""The asyncio DHT node and the services built on it."""

__all__: list[str] = []
