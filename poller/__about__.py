"""The version of poller."""

__version__ = "0.1.0"
