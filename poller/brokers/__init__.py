"""Broker adapters: one module per broker API, each registered through ``register_brokers``."""
