"""What the handlers share, opened once in the application's lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from gateway.auth import TokenChecker
from gateway.publisher import Publisher
from gateway.replies import Replies
from registry.config import Settings


@dataclass
class Gateway:
    settings: Settings
    engine: Engine
    tokens: TokenChecker
    publisher: Publisher
    replies: Replies
