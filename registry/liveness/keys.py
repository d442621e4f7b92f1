"""Redis keys of CONTRACT §8 and the pipeline operations on them."""

from __future__ import annotations

from typing import TYPE_CHECKING
from uuid import UUID

if TYPE_CHECKING:
    import redis

URL_CACHE_TTL_SECONDS = 300
LIVENESS_PREFIX = "ws:"


def liveness_key(workspace_id: UUID | str) -> str:
    return f"ws:{workspace_id}"


def url_key(workspace_id: UUID | str) -> str:
    return f"ws:{workspace_id}:url"


def internal_url_key(workspace_id: UUID | str) -> str:
    return f"ws:{workspace_id}:internal_url"


def workspace_id_from_liveness_key(key: str) -> UUID | None:
    """The id when `key` is exactly `ws:<uuid>`; None for every other key."""
    if not key.startswith(LIVENESS_PREFIX):
        return None
    rest = key[len(LIVENESS_PREFIX) :]
    if len(rest) != 36:  # ws:<id>:url and friends are longer; cheap early exit
        return None
    try:
        parsed = UUID(rest)
    except ValueError:
        return None
    return parsed if str(parsed) == rest.lower() else None


def set_liveness(pipe: redis.client.Pipeline, workspace_id: UUID, ttl_seconds: int) -> None:
    # SET with EX (re)creates the key: a key lost to a Redis restart comes back.
    pipe.set(liveness_key(workspace_id), "online", ex=ttl_seconds)


def cache_urls(
    pipe: redis.client.Pipeline,
    workspace_id: UUID,
    effective_url: str | None,
    agent_url: str | None,
) -> None:
    """Cache both URLs; an empty one is deleted, so a dropped URL (push -> poll) never lingers."""
    for key, url in (
        (url_key(workspace_id), effective_url),
        (internal_url_key(workspace_id), agent_url),
    ):
        if url:
            pipe.set(key, url, ex=URL_CACHE_TTL_SECONDS)
        else:
            pipe.delete(key)


def clear_workspace_keys(pipe: redis.client.Pipeline, workspace_id: UUID) -> None:
    pipe.delete(liveness_key(workspace_id), url_key(workspace_id), internal_url_key(workspace_id))


# Every key of a batch in one argument, deleted 500 at a time: 1,500 separate DEL
# arguments cost the client more than the whole script costs Redis (the heartbeat path
# and the outbox pass their batches the same way).
_DEL_KEYS = """
local batch, n = {}, 0
for key in string.gmatch(ARGV[1], "%S+") do
    batch[#batch + 1] = key
    if #batch == 500 then
        n = n + redis.call('DEL', unpack(batch))
        batch = {}
    end
end
if #batch > 0 then
    n = n + redis.call('DEL', unpack(batch))
end
return n
"""


def clear_many_workspace_keys(pipe: redis.client.Pipeline, workspace_ids: list[UUID]) -> None:
    """`clear_workspace_keys` for a batch: one command for all their keys."""
    texts = [str(ws) for ws in workspace_ids]  # each id formatted once, not per key
    keys = " ".join(f"{liveness_key(t)} {url_key(t)} {internal_url_key(t)}" for t in texts)
    if keys:
        pipe.eval(_DEL_KEYS, 0, keys)


# The last self-preservation evaluation, for sweeps to reuse (registry.liveness.
# selfpreservation.reuse); expires after SELF_PRESERVATION_REUSE_SECONDS.
SELF_PRESERVATION_LAST_KEY = "registry:self_preservation:last"
