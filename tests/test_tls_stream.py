"""raftxmpp.tls.SocketTLSStream: server-side TLS on the socket itself, against trio's own
TLS client over real loopback sockets (trio's stream contract: data both ways, EOF as b"",
errors as BrokenResourceError / ClosedResourceError, a cancelled write breaks the stream)."""

from __future__ import annotations

import ssl

import pytest
import trio
import trio.testing
import trustme

from raftxmpp.tls import SocketTLSStream


@pytest.fixture(scope="module")
def contexts():
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


async def _pair(contexts, nursery) -> tuple[SocketTLSStream, trio.SSLStream]:
    """A connected (server, client) pair, both handshaken."""
    server_context, client_context = contexts
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    accepted = trio.Event()
    box: list[SocketTLSStream] = []

    async def serve() -> None:
        stream = await listener.accept()
        box.append(await SocketTLSStream.accept(stream, server_context))
        await listener.aclose()
        accepted.set()

    nursery.start_soon(serve)
    plain = await trio.open_tcp_stream("127.0.0.1", port)
    client = trio.SSLStream(plain, client_context, server_hostname="localhost")
    await client.do_handshake()
    await accepted.wait()
    return box[0], client


async def _read_exactly(stream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive_some(65536)
        assert chunk, "early EOF"
        data += chunk
    return bytes(data)


async def test_data_both_ways_and_large_writes(contexts):
    async with trio.open_nursery() as nursery:
        server, client = await _pair(contexts, nursery)
        await client.send_all(b"<stream:stream>")
        assert await server.receive_some(100) == b"<stream:stream>"
        # Larger than the socket buffers: the server's write waits for the client to read.
        big = bytes(range(256)) * 16384  # 4 MiB
        async with trio.open_nursery() as inner:
            inner.start_soon(server.send_all, big)
            assert await _read_exactly(client, len(big)) == big
        async with trio.open_nursery() as inner:
            inner.start_soon(client.send_all, big)
            assert await _read_exactly(server, len(big)) == big
        await client.aclose()
        await server.aclose()


async def test_close_notify_and_abrupt_close_read_as_eof(contexts):
    async with trio.open_nursery() as nursery:
        server, client = await _pair(contexts, nursery)
        await client.aclose()  # sends close_notify
        assert await server.receive_some(10) == b""
        await server.aclose()
        server, client = await _pair(contexts, nursery)
        await client.transport_stream.aclose()  # TCP close without close_notify
        assert await server.receive_some(10) == b""
        await server.aclose()


async def test_closing_wakes_a_waiting_reader_and_refuses_later_calls(contexts):
    async with trio.open_nursery() as nursery:
        server, client = await _pair(contexts, nursery)
        failure: list[BaseException] = []

        async def read() -> None:
            try:
                await server.receive_some(10)
            except trio.ClosedResourceError as exc:
                failure.append(exc)

        async with trio.open_nursery() as inner:
            inner.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            await server.aclose()
        assert failure
        with pytest.raises(trio.ClosedResourceError):
            await server.receive_some(10)
        with pytest.raises(trio.ClosedResourceError):
            await server.send_all(b"x")
        await client.aclose()


async def test_a_cancelled_write_breaks_the_stream(contexts):
    async with trio.open_nursery() as nursery:
        server, client = await _pair(contexts, nursery)
        with trio.move_on_after(0.3) as scope:
            await server.send_all(b"x" * (64 << 20))  # the client never reads
        assert scope.cancelled_caught
        with pytest.raises(trio.BrokenResourceError):
            await server.send_all(b"<presence/>")
        await server.aclose()
        await client.transport_stream.aclose()


async def test_a_client_that_is_not_tls_fails_the_handshake_and_sees_a_close(contexts):
    """Its unread bytes are read away first: a close, not a connection reset."""
    server_context, _ = contexts
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    received = bytearray()
    async with trio.open_nursery() as nursery:
        async def talk_plain() -> None:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"<?xml version='1.0'?><stream:stream to='localhost'>" * 20)
            while data := await stream.receive_some(4096):  # a reset would raise here
                received.extend(data)

        nursery.start_soon(talk_plain)
        stream = await listener.accept()
        with pytest.raises(trio.BrokenResourceError):
            await SocketTLSStream.accept(stream, server_context)
    await listener.aclose()
    assert b"stream" not in received  # at most a TLS alert
