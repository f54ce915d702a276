"""Retrieval on frozen features: index a folder, query it, find near-duplicates, cluster, and the revisited
Oxford / Paris evaluation (`python -m retrieval --help`)."""
