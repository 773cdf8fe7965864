"""In-process simulated networks, scenarios and benchmarks: ``python -m simulations --list``."""

__all__: list[str] = []
