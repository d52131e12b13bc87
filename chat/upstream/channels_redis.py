"""channels_redis: layer group joins and leaves for many groups at once, in few commands.

A worker's hub subscribes its one layer channel to a layer group per user
connected there. channels_redis's `group_add` is two Redis round trips
(`ZADD`, then `EXPIRE`), and redis-py spends more CPU on each round trip than
Redis does: while sockets open in a burst these subscriptions were a large
share of the worker's CPU, and the hub renews every group it holds every few
seconds. `group_add_many` sends them in one script call per thousand groups
of a Redis shard, and `group_discard_many` leaves them the same way.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable

from channels.layers import BaseChannelLayer
from channels_redis.core import RedisChannelLayer

from chat.upstream.reaches import missing_assignments, missing_attributes


def group_key_problem() -> str | None:
    """`group_add_many` writes the keys that `_group_key` names, as `group_add` does."""
    return missing_attributes(
        RedisChannelLayer,
        "_group_key",
        "consistent_hash",
        "connection",
        "require_valid_group_name",
        "require_valid_channel_name",
    ) or missing_assignments(RedisChannelLayer.__init__, "group_expiry")


# KEYS: the groups' sorted sets; ARGV: the channel, the time, the expiry. What
# `group_add` does to each, in one command: a pipeline still cost redis-py a
# command packed and a reply parsed per group and call (a socket of a user in
# 10,000 groups took half a second of CPU to open).
_ADD_MANY = """
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, ARGV[2], ARGV[1])
  redis.call('EXPIRE', key, ARGV[3])
end
return #KEYS
"""
# Groups per script call: Redis runs nothing else while a script runs.
_SCRIPT_CHUNK = 1000


async def group_add_many(
    layer: BaseChannelLayer, groups: Iterable[str], channel: str, *, pipelined: bool = True
) -> None:
    """`layer.group_add(group, channel)` for each group, in a trip per thousand of a shard on Redis.

    What lands in Redis is what `group_add` writes: the channel in the
    group's sorted set scored with the time, and the group's expiry renewed.
    Other layers (or `pipelined=False`) get their own `group_add`, one by one.
    """
    if not pipelined or not isinstance(layer, RedisChannelLayer):
        for group in groups:
            await layer.group_add(group, channel)
        return
    layer.require_valid_channel_name(channel)
    by_shard: dict[int, list[str]] = defaultdict(list)
    for group in groups:
        layer.require_valid_group_name(group)
        by_shard[layer.consistent_hash(group)].append(group)
    now = time.time()
    for shard, names in by_shard.items():
        keys = [layer._group_key(name) for name in names]
        connection = layer.connection(shard)
        for start in range(0, len(keys), _SCRIPT_CHUNK):
            chunk = keys[start : start + _SCRIPT_CHUNK]
            await connection.eval(
                _ADD_MANY, len(chunk), *chunk, channel, repr(now), layer.group_expiry
            )


# KEYS: the groups' sorted sets; ARGV[1]: the channel. What `group_discard` does
# to each, in one command: a pipeline of ZREMs still cost redis-py a command
# packed and a reply parsed per group (over 200 ms for 10,000 groups).
_DISCARD_MANY = """
for _, key in ipairs(KEYS) do
  redis.call('ZREM', key, ARGV[1])
end
return #KEYS
"""


async def group_discard_many(
    layer: BaseChannelLayer, groups: Iterable[str], channel: str, *, batched: bool = True
) -> None:
    """`layer.group_discard(group, channel)` for each group, in one command per
    thousand groups of a shard on Redis.

    A socket of a user in thousands of groups closing must not cost a Redis
    round trip, or a command packed and parsed, per group. Other layers get
    their own `group_discard`, one by one (and so does Redis with `batched` off:
    `chat.upstream.PIPELINED_JOINS`).
    """
    if not batched or not isinstance(layer, RedisChannelLayer):
        for group in groups:
            await layer.group_discard(group, channel)
        return
    layer.require_valid_channel_name(channel)
    by_shard: dict[int, list[str]] = defaultdict(list)
    for group in groups:
        layer.require_valid_group_name(group)
        by_shard[layer.consistent_hash(group)].append(layer._group_key(group))
    for shard, keys in by_shard.items():
        connection = layer.connection(shard)
        for start in range(0, len(keys), _SCRIPT_CHUNK):
            chunk = keys[start : start + _SCRIPT_CHUNK]
            await connection.eval(_DISCARD_MANY, len(chunk), *chunk, channel)
