"""Serving: the registered version behind a router, rolled out as a canary."""
