"""The jobs: each module owns one concern and exposes one pass over its items."""
