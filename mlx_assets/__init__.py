"""The MLX asset graph, by lifecycle stage, and its Definitions."""
