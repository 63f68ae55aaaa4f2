"""Evaluation: metrics on the test days and the blocking quality gate."""
