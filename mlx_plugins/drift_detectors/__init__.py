"""Drift detector plugins: compare a current partition with a reference window."""
