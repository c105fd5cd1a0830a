"""asyncio integration: a BufferedProtocol that speaks frames, and stream-style helpers.

Two ways in:

* subclass :class:`FrameProtocol` and implement ``frame_received(frame)`` (or ``frames_received(frames)``, once
  per read with every frame it completed); the event loop reads straight into the decoder's memory
  (``get_buffer``/``buffer_updated``), and ``send_frame()`` writes one frame;
* or use :func:`open_connection` / :func:`start_server` (:func:`open_unix_connection` /
  :func:`start_unix_server` on a Unix socket), which hand out a :class:`FrameReader` (``await read_frame()``,
  ``async for frame in reader``) and a :class:`FrameWriter` (``write_frame()``, ``await drain()``), shaped like
  asyncio's own streams.

Both take the codec's layout options (``prefix`` or a ``Framing``, ``offset``, ``adjust``, ``strip``,
``max_frame``) and ``ssl=`` (an ``ssl.SSLContext``) for TLS; everything below holds over TLS too (asyncio's
and uvloop's TLS transports hand a BufferedProtocol the decrypted bytes the same way).

Theory of operation: what costs in an asyncio server is what happens per frame in Python and per system
call, not the parsing.  A peer that pipelines sends many frames per read; answering each with its own
``transport.write`` makes one ``send`` system call per reply (uvloop and asyncio both try to write at once),
and that costs several times what parsing and the reply's own Python code cost (at 16 frames per read,
``strace -c`` counted 24,039 writes among 25,572 system calls of such a server).  So replies are written
together:

* a protocol's frames sent while it handles one read (``frame_received`` / ``frames_received``) are collected
  and written in one ``transport.write`` when that read's callbacks return;
* a stream writer's frames are collected while received frames are still waiting to be read, and written
  together once the last of them is answered, when the event loop next gets control (one ``call_soon`` per
  batch: the handler awaited something else), or once 64 KiB are collected; with nothing waiting to be read,
  the usual request-reply turn, a frame is written at once.

Anything that could observe the order of the bytes -- the protocol's ``transport`` attribute,
``FrameWriter.transport``, ``close()``, ``write_eof()`` -- writes the collected frames first.  Large payloads
(64 KiB or more) are never collected: what was collected goes first, then the payload next to its header,
uncopied.
"""

from __future__ import annotations

from ._aio_protocol import DEFAULT_HIGH_WATER as DEFAULT_HIGH_WATER
from ._aio_protocol import WRITE_BATCH_LIMIT as WRITE_BATCH_LIMIT
from ._aio_protocol import FrameProtocol
from ._aio_streams import ConnectedCallback as ConnectedCallback
from ._aio_streams import (
    FrameReader,
    FrameWriter,
    open_connection,
    open_unix_connection,
    start_server,
    start_unix_server,
)
from ._framed import SCATTER_THRESHOLD as SCATTER_THRESHOLD

__all__ = [
    "FrameProtocol",
    "FrameReader",
    "FrameWriter",
    "open_connection",
    "open_unix_connection",
    "start_server",
    "start_unix_server",
]
