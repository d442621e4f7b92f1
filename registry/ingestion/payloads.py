"""Validation of message payloads (CONTRACT §4) with pydantic.

Types are strict on purpose: a producer that sends `"3"` for a count or `true` for a
number has a bug we want to see as a rejection naming the field, not a silent
coercion. Unknown fields are ignored so producers can be upgraded first.

Strings have two limits: free-text fields the agent reports (`sample_error`,
`current_task`) are *capped* — truncated to `TEXT_CAP` as CONTRACT §4.2 step 3 says —
while any string longer than `MAX_STRING` is rejected outright as oversized.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    Strict,
    StrictBool,
    StrictInt,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_serializer,
)

from molecule_registry_client.names import MAX_HEARTBEAT_BATCH
from registry.outcomes import Rejected
from registry.statuses import DEFAULT_RUNTIME

MAX_STRING = 65_536  # any string longer than this is rejected
TEXT_CAP = 4_096  # sample_error / current_task are truncated to this
MAX_URL = 2_048
MAX_TOKEN = 256
MAX_NAME = 256
AGENT_CARD_MAX_BYTES = 256 * 1024
# Levels of objects/arrays, the card itself the first. Real cards use a handful; 24
# keeps a refused card's message (body list, args, payload, card: 3 levels more)
# within a 32-level bound on whole message bodies, so the refusal names the card.
AGENT_CARD_MAX_DEPTH = 24
MAX_SPEND_CENTS = 10**12
MAX_INT32 = 2**31 - 1
# A producer clock far ahead would block every later heartbeat by the ordering guard.
MAX_SENT_AT_SKEW_SECONDS = 300


class PayloadError(Rejected):
    """A payload that can never be applied; the message names the field."""


def _uuid_text(value: Any) -> Any:
    # Ids travel as JSON strings; a UUID object from a Python producer is fine too.
    if isinstance(value, UUID):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a UUID string")
    try:
        return UUID(value)
    except ValueError:
        raise ValueError("must be a UUID") from None


def _storable_text(value: str) -> str:
    # PostgreSQL text and JSONB cannot hold NUL, and a lone surrogate (which JSON can
    # carry as "\ud800") has no UTF-8 encoding: either would fail the write later as a
    # task error instead of a rejection naming the field.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("is not valid Unicode (lone surrogate)") from None
    return value


Storable = AfterValidator(_storable_text)
WorkspaceId = Annotated[UUID, BeforeValidator(_uuid_text)]
BoundedStr = Annotated[str, Strict(), StringConstraints(max_length=MAX_STRING), Storable]
Url = Annotated[
    str, Strict(), StringConstraints(max_length=MAX_URL, strip_whitespace=True), Storable
]
Token = Annotated[str, Strict(), StringConstraints(max_length=MAX_TOKEN), Storable]
Count = Annotated[StrictInt, Field(ge=0, le=MAX_INT32)]
Fraction = Annotated[float, Strict(), Field(ge=0, le=1, allow_inf_nan=False)]
DeliveryMode = Literal["push", "poll", ""]
CapabilityName = Annotated[str, Strict(), StringConstraints(max_length=MAX_NAME), Storable]
RuntimeName = Annotated[str, Strict(), StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]


def _cap(value: str | None) -> str | None:
    return value[:TEXT_CAP] if value is not None else None


def _json_strings(value: Any) -> Iterator[str]:
    """Every key and string value in a decoded JSON document, refusing one nested deeper
    than AGENT_CARD_MAX_DEPTH (iterative: no stack limit, whatever the depth)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict | list):
            if depth >= AGENT_CARD_MAX_DEPTH:
                raise ValueError(
                    f"is nested more than {AGENT_CARD_MAX_DEPTH} levels deep "
                    "(objects and arrays, the card itself included)"
                )
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


def _check_agent_card(value: Any) -> Any:
    if not isinstance(value, dict):
        raise ValueError("must be a JSON object")
    # The depth is checked first, by this iterative walk: pydantic, json and the
    # event encoders all recurse, and a card a few hundred levels deep failed the
    # task in serialisation ("Maximum serialization depth exceeded") instead of
    # being refused.
    for item in _json_strings(value):
        _storable_text(item)
    try:
        # allow_nan=False: Celery's JSON carries NaN/Infinity, which JSONB refuses.
        text = json.dumps(value, separators=(",", ":"), default=str, allow_nan=False)
    except ValueError:
        raise ValueError("must not contain NaN or Infinity") from None
    except RecursionError:
        raise ValueError("is nested too deeply") from None
    size = len(text.encode())
    if size > AGENT_CARD_MAX_BYTES:
        raise ValueError(f"is {size} bytes; at most {AGENT_CARD_MAX_BYTES} are accepted")
    return value


AgentCard = Annotated[dict[str, Any], BeforeValidator(_check_agent_card)]


def checked_agent_card(value: Any) -> dict[str, Any]:
    """`value` if it is a storable agent card; ValueError saying why not."""
    return _check_agent_card(value)  # type: ignore[no-any-return]


def _parse_sent_at(value: Any) -> Any:
    """RFC 3339 text or Unix epoch seconds -> aware UTC datetime."""
    if value is None:
        return None
    if isinstance(value, datetime):
        # Celery's JSON decodes a Python producer's datetime; a naive one is taken as UTC
        # (comparing naive with aware datetimes would fail the task instead).
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, bool):
        raise ValueError("must be an RFC 3339 timestamp or Unix epoch seconds")
    if isinstance(value, int | float):
        try:
            value = float(value)  # an integer past float's range (10**400) overflows here
        except OverflowError:
            raise ValueError("is out of range") from None
        if not math.isfinite(value) or value < 0:
            raise ValueError("must be a finite, non-negative Unix timestamp")
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            raise ValueError("is out of range") from None
    if isinstance(value, str) and len(value) <= 64:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ValueError("must be an RFC 3339 timestamp or Unix epoch seconds") from None
        try:
            return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        except OverflowError:  # 9999-12-31T23:59-01:00 is past datetime.max in UTC
            raise ValueError("is out of range") from None
    raise ValueError("must be an RFC 3339 timestamp or Unix epoch seconds")


class _Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class RuntimeMetadata(_Payload):
    capabilities: dict[CapabilityName, StrictBool] = Field(default_factory=dict)
    idle_timeout_seconds: Count | None = None

    # Stored as sent (CONTRACT §4.2): an absent `idle_timeout_seconds` stays absent in
    # workspaces.runtime_metadata rather than becoming null.
    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if data.get("idle_timeout_seconds") is None:
            data.pop("idle_timeout_seconds", None)
        return data

    @property
    def native_status_mgmt(self) -> bool:
        return self.capabilities.get("status_mgmt") is True


class RegisterPayload(_Payload):
    id: WorkspaceId
    url: Url = ""
    agent_card: AgentCard
    delivery_mode: DeliveryMode = ""
    auth_token: Token | None = None
    # Extension (CONTRACT §4.1 step 7): a secret of the sender's own, so that a re-sent
    # copy of this message gets the token its first delivery issued.
    request_secret: Token | None = None


class HeartbeatPayload(_Payload):
    workspace_id: WorkspaceId
    auth_token: Token | None = None
    error_rate: Fraction = 0.0
    sample_error: BoundedStr | None = None
    active_tasks: Count = 0
    uptime_seconds: Count = 0
    current_task: BoundedStr | None = None
    # Any integer is accepted and then clamped to [0, 10^12] (CONTRACT §4.2 step 3).
    monthly_spend: StrictInt = 0
    runtime_state: Annotated[str, Strict(), StringConstraints(max_length=64), Storable] = ""
    runtime_metadata: RuntimeMetadata | None = None
    sent_at: Annotated[datetime | None, BeforeValidator(_parse_sent_at)] = None
    # CONTRACT §12. `agent_card` is advisory: any value is accepted here and a card that
    # cannot be used is skipped (counted) by registry.ingestion.cardbackfill, while the
    # rest of the heartbeat applies. `is_busy` is a fact the row stores: not a boolean
    # is a rejection naming the field.
    agent_card: Any = None
    is_busy: StrictBool | None = None

    @property
    def busy(self) -> bool:
        """What `is_busy` stores: as sent, else whether the agent reports active tasks."""
        return self.is_busy if self.is_busy is not None else self.active_tasks > 0

    @field_validator("sample_error", "current_task")
    @classmethod
    def _cap_text(cls, value: str | None) -> str | None:
        return _cap(value)

    @field_validator("monthly_spend")
    @classmethod
    def _clamp_spend(cls, value: int) -> int:
        return max(0, min(value, MAX_SPEND_CENTS))


class UpdateCardPayload(_Payload):
    workspace_id: WorkspaceId
    agent_card: AgentCard
    auth_token: Token | None = None


class CreateWorkspacePayload(_Payload):
    name: Annotated[str, Strict(), StringConstraints(min_length=1, max_length=MAX_NAME), Storable]
    id: WorkspaceId | None = None
    runtime: RuntimeName = DEFAULT_RUNTIME
    parent_id: WorkspaceId | None = None
    tier: Annotated[StrictInt, Field(ge=0, le=1000)] = 1
    hibernation_idle_minutes: Annotated[StrictInt, Field(ge=0, le=525_600)] | None = None
    max_concurrent_tasks: Annotated[StrictInt, Field(ge=1, le=10_000)] = 1
    request_secret: Token | None = None  # as RegisterPayload's


class RemoveWorkspacePayload(_Payload):
    workspace_id: WorkspaceId


class CanCommunicatePayload(_Payload):
    caller_id: WorkspaceId
    target_id: WorkspaceId


P = TypeVar("P", bound=BaseModel)


# Error locations hold keys the producer chose (a capability name, a card key): a
# newline or an escape sequence there would forge a log line or a terminal's output.
# Names of our own fields are shown bare; any other key JSON-quoted (ASCII only, so
# every control character is escaped) and cut to LOC_PART_CAP characters.
_PLAIN_PART = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}|\[key\]")
LOC_PART_CAP = 64
MAX_DESCRIBED_ERRORS = 10  # a payload with thousands of bad keys gives one bounded text


def _loc_part(part: Any) -> str:
    if isinstance(part, int) and not isinstance(part, bool):
        return str(part)
    text = str(part)
    if _PLAIN_PART.fullmatch(text):
        return text
    clipped = text[:LOC_PART_CAP]
    return json.dumps(clipped) + ("…" if len(text) > LOC_PART_CAP else "")


def _describe(error: dict[str, Any]) -> str:
    field = ".".join(_loc_part(part) for part in error["loc"]) or "payload"
    message = error["msg"]
    # pydantic prefixes custom messages with "Value error, "; the field name is clearer.
    message = message.removeprefix("Value error, ")
    if error["type"] == "missing":
        message = "is required"
    return f"{field}: {message}"


def parse_payload(model: type[P], raw: Any) -> P:
    """Validate `raw` into `model`, or raise PayloadError naming every bad field."""
    if not isinstance(raw, dict):
        raise PayloadError(f"payload: must be a JSON object, not {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        texts = [_describe(e) for e in errors[:MAX_DESCRIBED_ERRORS]]
        if len(errors) > MAX_DESCRIBED_ERRORS:
            texts.append(f"and {len(errors) - MAX_DESCRIBED_ERRORS} more errors")
        raise PayloadError("; ".join(texts)) from None


_HEARTBEATS = TypeAdapter(list[HeartbeatPayload])


def parse_heartbeat_batch(raw: Any) -> list[HeartbeatPayload | PayloadError]:
    """The items of a `registry.heartbeat_batch` envelope (CONTRACT §4.2a), each validated
    on its own: a bad item comes back as its PayloadError (naming `heartbeats[i].field`)
    and is refused alone. A bad envelope raises PayloadError: it is rejected whole."""
    if not isinstance(raw, dict):
        raise PayloadError(f"payload: must be a JSON object, not {type(raw).__name__}")
    items = raw.get("heartbeats")
    if items is None:
        raise PayloadError("heartbeats: is required")
    if not isinstance(items, list):
        raise PayloadError(f"heartbeats: must be a list, not {type(items).__name__}")
    if not 1 <= len(items) <= MAX_HEARTBEAT_BATCH:
        raise PayloadError(
            f"heartbeats: must hold 1 to {MAX_HEARTBEAT_BATCH} items, not {len(items)}"
        )
    if all(isinstance(item, dict) for item in items):
        # The whole list in one call (a fifth cheaper than item by item); when some item
        # is bad, each is validated alone below, so that each names its own errors.
        try:
            valid: list[HeartbeatPayload | PayloadError] = list(_HEARTBEATS.validate_python(items))
        except ValidationError:
            pass
        else:
            return valid
    parsed: list[HeartbeatPayload | PayloadError] = []
    for index, item in enumerate(items):
        try:
            parsed.append(parse_payload(HeartbeatPayload, item))
        except PayloadError as exc:
            parsed.append(PayloadError(f"heartbeats[{index}].{exc.error}"))
    return parsed
