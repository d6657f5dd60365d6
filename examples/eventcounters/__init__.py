"""The projections tutorial's event counters: a view, its backends, a projection.

Run ``python -m examples.eventcounters`` to watch it count.
``BulkEventCountersProjection`` counts a catch-up batch with one view command.
"""
