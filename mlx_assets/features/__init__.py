"""Features: flights joined with weather and planes, calendar and time-of-day features."""
