"""Run metadata, summaries and their printed tables."""
