"""Monitoring: per-day feature drift, the sensor that turns drift into retraining (the event
bus), and the schedule that brings in each new day."""
