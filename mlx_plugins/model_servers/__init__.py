"""Model server plugins: package and serve registered models."""
