"""chat.upstream.channels_redis: group_add_many and group_discard_many do what channels_redis's
group_add and group_discard do, for many groups at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import pytest
from channels.layers import InMemoryChannelLayer
from channels_redis.core import RedisChannelLayer

from chat.upstream.channels_redis import group_add_many, group_discard_many
from tests.conftest import REDIS_URL

WAIT = 5.0


def redis_url_of_db(number: int) -> str:
    parts = urlsplit(REDIS_URL)
    return urlunsplit(parts._replace(path=f"/{number}"))


@pytest.fixture
async def two_shards(redis_prefix: str) -> AsyncIterator[RedisChannelLayer]:
    """A channels_redis layer sharded over two Redis databases (a stand-in for two servers)."""
    urls = [redis_url_of_db(0), redis_url_of_db(1)]
    layer = RedisChannelLayer(hosts=urls, prefix=f"{redis_prefix}:layer", group_expiry=77)
    yield layer
    await layer.flush()  # every key under the prefix, on both shards


async def test_written_as_group_add_writes_it_on_each_groups_shard(two_shards):
    layer = two_shards
    channel = await layer.new_channel("chatworker")
    groups = [f"chat.user.{n}" for n in range(12)]
    assert len({layer.consistent_hash(g) for g in groups}) == 2, "the groups span both shards"

    await group_add_many(layer, groups[:-1], channel)
    await layer.group_add(groups[-1], channel)

    for group in groups:
        redis = layer.connection(layer.consistent_hash(group))
        key = layer._group_key(group)
        assert await redis.zrange(key, 0, -1) == [channel.encode()]
        assert 0 < await redis.ttl(key) <= 77
    for group in groups:
        await layer.group_send(group, {"type": "probe", "group": group})
        message = await asyncio.wait_for(layer.receive(channel), WAIT)
        assert message == {"type": "probe", "group": group}


async def test_an_invalid_group_name_is_refused_before_anything_is_written(two_shards):
    layer = two_shards
    channel = await layer.new_channel("chatworker")
    with pytest.raises(TypeError):
        await group_add_many(layer, ["chat.user.1", "not a valid name!"], channel)
    redis = layer.connection(layer.consistent_hash("chat.user.1"))
    assert await redis.exists(layer._group_key("chat.user.1")) == 0


async def test_other_layers_get_their_own_group_add():
    layer = InMemoryChannelLayer()
    channel = await layer.new_channel("chatworker")
    await group_add_many(layer, ["chat.all", "chat.user.3"], channel)
    await layer.group_send("chat.user.3", {"type": "probe"})
    assert await asyncio.wait_for(layer.receive(channel), WAIT) == {"type": "probe"}


async def test_discarded_as_group_discard_discards_on_each_groups_shard(two_shards):
    layer = two_shards
    channel, other = await layer.new_channel("chatworker"), await layer.new_channel("chatworker")
    groups = [f"chat.group.{n}" for n in range(2500)]  # more than one script call per shard
    assert len({layer.consistent_hash(g) for g in groups}) == 2, "the groups span both shards"
    await group_add_many(layer, groups, channel)
    await group_add_many(layer, groups[:3], other)

    await group_discard_many(layer, groups, channel)

    for group in groups:
        redis = layer.connection(layer.consistent_hash(group))
        members = await redis.zrange(layer._group_key(group), 0, -1)
        assert members == ([other.encode()] if group in groups[:3] else [])
