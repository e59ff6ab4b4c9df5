"""worker: an app's background maintenance on its own PostgreSQL."""

__version__ = "0.1.0"
