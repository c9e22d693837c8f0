"""The click command line: a thin layer over the Python API, and its config profiles."""
