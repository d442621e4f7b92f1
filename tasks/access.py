"""registry.can_communicate (SPEC §9)."""
