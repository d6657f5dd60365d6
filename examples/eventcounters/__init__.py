"""The projections tutorial's event counters: a view, its backends, a projection.

Run ``python -m examples.eventcounters`` to watch it count.
"""
