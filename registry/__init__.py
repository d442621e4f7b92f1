"""molecule-registry: the domain logic (store, statuses, events, tokens, sweeps…).

Nothing here imports Celery, so every rule can be exercised without a broker.
"""
