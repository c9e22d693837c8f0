"""The click command line: a thin layer over the Python API, and its config profiles.

The top layer: imports anything below it; nothing in the package imports it."""
