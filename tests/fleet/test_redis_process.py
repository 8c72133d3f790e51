"""The redis-server the fleet tests, the fleet soak and bench_fleet.py share (tests/redis_process.py)."""

from __future__ import annotations

import shutil

import pytest
import trio

from ..redis_process import READY, RedisDidNotStart, open_redis_process

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")


async def _inline(port: int, command: bytes) -> bytes:
    """One inline command (Redis accepts ``SET k v\\r\\n`` as well as RESP) and the reply's first line."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(command + b"\r\n")
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = await stream.receive_some(4096)
            assert chunk, f"redis closed the connection after {reply!r}"
            reply += chunk
    return reply


async def test_a_restart_keeps_the_port_and_comes_back_empty() -> None:
    async with open_redis_process() as redis:
        with trio.fail_after(30):
            await redis.start()
            assert await _inline(redis.port, b"SET soak-key there") == b"+OK\r\n"
            await redis.kill()
            with pytest.raises(OSError):
                await trio.open_tcp_stream("127.0.0.1", redis.port)
            await redis.start()
            assert await _inline(redis.port, b"GET soak-key") == b"$-1\r\n"  # no persistence: the key is gone
    assert redis.starts == 2
    assert redis.log.count(READY) == 2
    assert redis.process is None  # killed when the block ended


async def test_a_server_that_cannot_bind_says_so_with_its_port() -> None:
    async with open_redis_process() as first:
        with trio.fail_after(30):
            await first.start()
            async with open_redis_process(port=first.port) as second:
                with pytest.raises(RedisDidNotStart, match=f"port {first.port}") as caught:
                    await second.start()
                assert second.process is None
                assert second.starts == 0
            assert await _inline(first.port, b"PING") == b"+PONG\r\n"  # the first one is untouched
    assert "in use" in str(caught.value)  # redis's own reason, from its log
