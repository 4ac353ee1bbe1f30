"""Reliability tests: real processes, real signals, one real SQLite file."""
