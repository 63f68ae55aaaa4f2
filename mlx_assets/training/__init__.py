"""Training: the time-split training set and the model trained by the ml_platform plugin."""
