"""The rate limits every command passes before its action runs."""

from __future__ import annotations

import logging

from chat.actions.services import Actor, Services
from chat.metrics import TALLY
from chat.protocol import RATE_LIMITED, ChatError
from chat.ratelimit import RateLimiter, command_cost

logger = logging.getLogger(__name__)


async def spend(services: Services, actor: Actor, kind: str) -> None:
    """Take a command's cost from the user's budget; `rate_limited` past it."""
    await _spend(services.rate_limiter, actor.user_id, kind)


async def spend_handshake(limiter: RateLimiter, user_id: int) -> bool:
    """Take a handshake's cost (`connect`) from the user's budget; False past it.

    Opening loads and subscribes to every group of the user: a reconnect loop
    spends from the same budget as commands.
    """
    try:
        await _spend(limiter, user_id, "connect")
    except ChatError:
        return False
    return True


async def _spend(limiter: RateLimiter, user_id: int, kind: str) -> None:
    try:
        allowed = await limiter.allow(f"user:{user_id}", command_cost(kind))
    except Exception:
        # The limiter lives in Redis; an outage must not stop messages
        # from being stored (docs/protocol.md, guarantees).
        logger.warning("rate limiter unavailable; letting a %s through", kind)
        return
    if not allowed:
        TALLY.rate_limited[kind] += 1
        done = "nothing was stored" if kind == "send" else f"this {kind} was not carried out"
        raise ChatError(RATE_LIMITED, f"you are sending too fast; {done}")


async def spend_membership_change(services: Services, actor: Actor, kind: str) -> None:
    """Take one join or leave from the user's membership budget; `rate_limited` past it.

    A budget of its own: each change is a notice to every online member of the group.
    """
    limiter = services.membership_limiter
    if limiter is None:
        return
    try:
        allowed = await limiter.allow(f"membership:{actor.user_id}")
    except Exception:
        logger.warning("rate limiter unavailable; letting a %s through", kind)
        return
    if not allowed:
        TALLY.rate_limited[kind] += 1
        raise ChatError(
            RATE_LIMITED,
            f"you are joining and leaving groups too fast; this {kind} was not carried out",
        )
