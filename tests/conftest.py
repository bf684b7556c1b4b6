"""Shared fixtures: one private redis-server per test session, and a fresh run id per test."""

from __future__ import annotations

import os
import uuid

import pytest

from kd_system.replay.redis_server import LocalRedisServer


@pytest.fixture(scope="session")
def redis_url():
    """URL of a Redis for the whole session: $KD_TEST_REDIS_URL if set, else a private
    redis-server on a free loopback port, stopped when the session ends. Tests share it, so
    give each test its own run id (the `run_id` fixture) to keep their keys apart."""
    external = os.environ.get("KD_TEST_REDIS_URL")
    if external:
        yield external
        return
    with LocalRedisServer() as server:
        yield server.url


@pytest.fixture
def run_id(request) -> str:
    """A run id unique to this test (store namespaces are kd:{run_id}:*)."""
    name = "".join(c if c.isascii() and c.isalnum() else "-" for c in request.node.name)[:60]
    return f"t-{name}-{uuid.uuid4().hex[:8]}"
