"""A heartbeat's `agent_card` (CONTRACT §4.2, §12): backfills a workspace that has none.

The field is optional and advisory: a card that cannot be used (not an object, too
big, an advertised `url` that fails the URL check of §6) is skipped and counted by
reason, and the rest of the heartbeat applies. A usable card fills `agent_card` only
when the row has none (the batch statement keeps a stored one), records no event,
and clears a register failure (§12): the agent has announced itself properly again.

Its URL is checked before the batch locks its rows (a DNS lookup must never run
under a row lock), and only for heartbeats that would use the card: authorised (no
lookup is ever made for a stranger, as for registrations), for a workspace without a
card or with a register failure to clear. Everyone else's card costs one dict check.
The batch judges the heartbeat again under the lock; a card checked here is only
ever used if that judgement lets the heartbeat apply.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, text

from registry.ingestion.payloads import HeartbeatPayload, checked_agent_card
from registry.ingestion.registration import check_dialable_url
from registry.ingestion.tokens import hash_token
from registry.ingestion.urlguard import Resolver
from registry.liveness.transitions import REGISTER_FAILURE_WINDOW_SECONDS
from registry.outcomes import Rejected

# Metric labels of registry_heartbeat_cards_skipped_total{reason}.
NOT_AN_OBJECT = "not_an_object"
INVALID = "invalid"
URL_REFUSED = "url_refused"

# The positions (1-based, in :ids) of the heartbeats whose card could be used: the
# hijack guard's rule (CONTRACT §4.1 step 1) and the card rule, in one statement.
_WANTING = text(
    """
    SELECT hb.ord
    FROM unnest(CAST(:ids AS uuid[]), CAST(:hashes AS text[])) WITH ORDINALITY
         AS hb(id, hash, ord)
    JOIN workspaces w ON w.id = hb.id
    WHERE (w.agent_card IS NULL
           OR w.last_register_failure_at > now() - make_interval(secs => :window))
      AND (NOT EXISTS (SELECT 1 FROM workspace_auth_tokens t
                       WHERE t.workspace_id = w.id AND t.revoked_at IS NULL)
           OR EXISTS (SELECT 1 FROM workspace_auth_tokens t
                      WHERE t.workspace_id = w.id AND t.revoked_at IS NULL
                        AND t.token_hash = hb.hash))
    """
)


def usable_cards(
    conn: Connection, heartbeats: Sequence[HeartbeatPayload], resolver: Resolver | None = None
) -> tuple[dict[int, dict[str, Any]], list[str]]:
    """(usable card by position in the batch, reasons of the cards skipped)."""
    carrying = [(i, hb) for i, hb in enumerate(heartbeats) if hb.agent_card is not None]
    if not carrying:
        return {}, []
    skipped: list[str] = []
    shaped: list[tuple[int, HeartbeatPayload, dict[str, Any]]] = []
    for position, hb in carrying:
        if not isinstance(hb.agent_card, dict):
            skipped.append(NOT_AN_OBJECT)
            continue
        try:
            card = checked_agent_card(hb.agent_card)
        except ValueError:
            skipped.append(INVALID)
            continue
        shaped.append((position, hb, card))
    if not shaped:
        return {}, skipped
    params = {
        "ids": [str(hb.workspace_id) for _, hb, _ in shaped],
        "hashes": [hash_token(hb.auth_token) if hb.auth_token else "" for _, hb, _ in shaped],
        "window": REGISTER_FAILURE_WINDOW_SECONDS,
    }
    wanting = {ordinal - 1 for ordinal in conn.execute(_WANTING, params).scalars()}
    usable: dict[int, dict[str, Any]] = {}
    checked: dict[str, str | None] = {}  # url -> refusal reason (one lookup per url)
    for index, (position, _hb, card) in enumerate(shaped):
        if index not in wanting:
            # Not authorised, or the row has a card and nothing to clear: the card
            # would change nothing, so it costs no lookup.
            continue
        reason = _url_refusal(card, checked, resolver)
        if reason is None:
            usable[position] = card
        else:
            skipped.append(reason)
    return usable, skipped


def _url_refusal(
    card: dict[str, Any], checked: dict[str, str | None], resolver: Resolver | None
) -> str | None:
    url = card.get("url")
    if url is None:
        return None
    if not isinstance(url, str):
        return URL_REFUSED
    if url not in checked:
        try:
            check_dialable_url(url, resolver, field="agent_card.url")
            checked[url] = None
        except Rejected:
            checked[url] = URL_REFUSED
    return checked[url]
