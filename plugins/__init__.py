"""poller's built-in notifier plugins, installed as ``poller_plugins``.

Each module is an ordinary pluggy plugin registered exactly like a third-party one: it
implements ``register_notifiers`` with ``from poller import hookimpl``.
"""
