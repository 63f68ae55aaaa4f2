"""Platform machinery that is not a swappable plugin: IO managers, run launchers, the model
registry, the platform settings and the instance home."""
