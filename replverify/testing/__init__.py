"""Code for tests and the demo: local clusters, sample data, the pytest plugin."""
