"""Celery task entry points: parse the payload, call the domain, return its result."""
