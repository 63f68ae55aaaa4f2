"""Registry: registered, immutable model versions with lineage."""
