"""Broker API simulators on loopback: same paths, envelopes, statuses and limits as the real
APIs, with orders that move through realistic lifecycles. Used by ``poller demo``, the tests
and the benchmarks."""
