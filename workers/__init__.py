"""Long-running processes: the Celery application and the liveness listener."""
