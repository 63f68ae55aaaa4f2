"""ML platform plugins: train and score models."""
