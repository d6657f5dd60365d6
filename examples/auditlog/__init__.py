"""An audit log of every event, per aggregate: a partitioned projection.

Each event is appended to the log with the position it was processed in;
the projection is processed in partitions (see
:mod:`asyncsourcing.projection.partitioned`), so each aggregate's entries
come in the order of its events, and the partitions go concurrently.
Tests use it to check that every event is processed exactly once, in order
per aggregate, and the benchmarks to time a handler that waits on IO.
"""
