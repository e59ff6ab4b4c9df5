"""A tiny stand-in for an app's own code, imported by declared `python` jobs in the tests."""
