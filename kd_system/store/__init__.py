"""Replay store: chunk codec, the Redis-backed ring buffer, and a private redis-server helper."""

from kd_system.store.codec import FORMAT_VERSION, decode_chunk, encode_chunk
from kd_system.store.redis_server import LocalRedisServer
from kd_system.store.replay import ReplayStore, StoreAddress, mask_url

__all__ = ["FORMAT_VERSION", "LocalRedisServer", "ReplayStore", "StoreAddress",
           "decode_chunk", "encode_chunk", "mask_url"]
