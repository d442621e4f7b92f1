"""The platform gateway (CONTRACT §11): the original's HTTP calls and WebSocket, served
from the registry's queue and events."""
