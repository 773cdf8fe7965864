"""Scenarios run on the simulated network (``python -m simulations SCENARIO``)."""
