"""The protocol side of :mod:`fastframe.aio`: :class:`FrameProtocol`, a ``BufferedProtocol`` whose unit is the
frame.  Import it from :mod:`fastframe.aio`; its docstring is the theory of operation (why the frames sent
while one read is handled are written together).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from types import ModuleType
from typing import TYPE_CHECKING, ClassVar

from ._codec_choice import codec as _impl
from ._framed import SCATTER_THRESHOLD, _flat, _Layout, _nbytes
from ._framing import Framing
from .exceptions import FrameError

if TYPE_CHECKING:  # pragma: no cover
    from ._framed import Buffer, Prefix  # (annotations only: _framed defines them for type checkers)

__all__ = ["DEFAULT_HIGH_WATER", "WRITE_BATCH_LIMIT", "FrameProtocol"]

log = logging.getLogger("fastframe.aio")

#: The reader pauses the transport once this many payload bytes are queued and not yet read.
DEFAULT_HIGH_WATER = 4 * 1024 * 1024

#: A stream writer hands its collected frames to the transport at the latest once this many payload bytes
#: are waiting (so the transport's own flow control, and drain(), see them).
WRITE_BATCH_LIMIT = 64 * 1024


class FrameProtocol(asyncio.BufferedProtocol):
    """A protocol whose unit is the frame.

    Override :meth:`frame_received` (called once per frame), or :meth:`frames_received` (called once per
    read with the list of frames it completed; the default calls :meth:`frame_received` for each).  Override
    :meth:`frame_error` to change what happens when the peer breaks the framing (the default logs and
    aborts the connection).  ``transport`` is set by ``connection_made``.

    ``prefix`` (or a :class:`~fastframe.Framing`) and the keyword options ``offset``, ``adjust`` and ``strip``
    describe the layout as for :class:`~fastframe.FramedSocket`: a payload's first ``offset`` bytes go before
    the length field, both ways.

    Frames sent with :meth:`send_frame` / :meth:`send_frames` while those callbacks run are written
    together, in one ``transport.write``, when the callbacks for that read return; reading ``self.transport``
    writes the frames collected so far first, so ``self.transport.close()`` (or ``write()``) after
    ``send_frame()`` keeps its order (a reference to the transport kept elsewhere and used directly inside
    those callbacks would not).  Sent at any other time (from a task, a timer), a frame is written at once.
    """

    codec: ClassVar[ModuleType] = _impl

    def __init__(
        self,
        prefix: Prefix = "!I",
        max_frame: int | None = None,
        *,
        offset: int = 0,
        adjust: int = 0,
        strip: int | None = None,
    ) -> None:
        codec = self.codec
        if offset or adjust or strip is not None:
            self._decoder = codec.Decoder(prefix, max_frame, offset=offset, adjust=adjust, strip=strip)
        else:
            self._decoder = codec.Decoder(prefix, max_frame)
        wire = _Layout.of(codec, prefix, self._decoder)
        #: The length field's format (a string, also when a Framing was given).
        self.prefix: str = prefix if type(prefix) is str else prefix.prefix  # type: ignore[union-attr]
        self._layout = wire.layout  # what encode()/encode_many() take: the prefix itself by default
        self._scatter = wire.scatter
        self._encode = codec.encode
        self._encode_many = codec.encode_many
        self._transport: asyncio.Transport | None = None
        self._batch: list[bytes] | None = None  # small payloads sent during this read's callbacks
        cls = type(self)
        # Per read, the loop makes two calls into the protocol and the protocol one per frame: spare Python
        # frames where nothing was overridden (the loop calls the decoder's get_buffer itself, and
        # buffer_updated calls frame_received directly instead of through frames_received).
        if cls.get_buffer is FrameProtocol.get_buffer:
            self.get_buffer = self._decoder.get_buffer  # type: ignore[method-assign]
        self._per_frame = cls.frames_received is FrameProtocol.frames_received

    @property
    def framing(self) -> Framing:
        """The layout, as a Framing (with the current ``max_frame``)."""
        return self._decoder.framing.replace(max_frame=self._decoder.max_frame)  # type: ignore[no-any-return]

    @property
    def transport(self) -> asyncio.Transport | None:
        """The connection's transport (None before ``connection_made``).

        Reading it first writes the frames collected so far, so that what is done with it comes after them.
        """
        if self._batch:
            self._write_batch()
        return self._transport

    @transport.setter
    def transport(self, transport: asyncio.Transport | None) -> None:
        self._transport = transport

    # -- asyncio.BufferedProtocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._decoder.get_buffer(sizehint)  # type: ignore[no-any-return]

    def buffer_updated(self, nbytes: int) -> None:
        error: FrameError | None = None
        try:
            frames = self._decoder.buffer_updated(nbytes)
        except FrameError as exc:
            frames, error = exc.frames, exc  # the whole frames before the error are still delivered
        if frames:
            # One read's frames to the callbacks; what they send is written in one go afterwards.
            self._batch = []
            try:
                if self._per_frame:
                    frame_received = self.frame_received
                    for frame in frames:
                        frame_received(frame)
                else:
                    self.frames_received(frames)
            finally:
                batch = self._batch
                self._batch = None
                if batch:
                    self._transport.write(self._encode_many(batch, self._layout))  # type: ignore[union-attr]
        if error is not None:
            self.frame_error(error)

    def _write_batch(self) -> None:
        """Write the frames collected so far in this read's callbacks (and go on collecting)."""
        batch = self._batch
        assert batch and self._transport is not None
        self._batch = []
        self._transport.write(self._encode_many(batch, self._layout))

    def eof_received(self) -> bool | None:
        try:
            self._decoder.close()
        except FrameError as exc:
            self.frame_error(exc)
        return None

    # -- frames ---------------------------------------------------------------------------------------

    def frames_received(self, frames: list[bytes]) -> None:
        """Called once per read with the frames it completed (a non-empty list, in order).

        The default calls :meth:`frame_received` for each.  Override it to handle a batch at once, e.g.
        ``self.send_frames([reply(f) for f in frames])``.
        """
        frame_received = self.frame_received
        for frame in frames:
            frame_received(frame)

    def frame_received(self, frame: bytes) -> None:
        """Called once per complete incoming frame, in order (by the default :meth:`frames_received`)."""
        raise NotImplementedError

    def frame_error(self, exc: FrameError) -> None:
        """Called when the incoming stream breaks the framing (oversized, malformed or cut-off frame)."""
        log.warning("closing connection: %s", exc)
        if self.transport is not None:
            self.transport.abort()

    def send_frame(self, payload: Buffer) -> None:
        """Write one frame (large payloads are not copied behind their header).

        Inside :meth:`frame_received` / :meth:`frames_received` the frame joins the others sent there, for
        one write when they return (a payload that is not ``bytes`` is copied now, so it may be reused).
        """
        batch = self._batch
        if batch is not None and type(payload) is bytes and len(payload) < SCATTER_THRESHOLD:
            batch.append(payload)
            return
        n = _nbytes(payload)
        if batch is not None and n < SCATTER_THRESHOLD:
            batch.append(bytes(_flat(payload)))
            return
        transport = self.transport  # writes what is batched first
        assert transport is not None, "send_frame() before connection_made()"
        if n < SCATTER_THRESHOLD:
            transport.write(self._encode(payload, self._layout))
        else:
            transport.writelines(self._scatter(payload, n))

    def send_frames(self, payloads: Iterable[Buffer]) -> None:
        """Write several frames in one transport write (large payloads go out next to their headers)."""
        batch = self._batch
        if batch is not None:
            for payload in payloads:
                if type(payload) is bytes and len(payload) < SCATTER_THRESHOLD:
                    batch.append(payload)
                else:
                    self.send_frame(payload)
                    batch = self._batch  # sending a large frame writes (and restarts) the batch
                    assert batch is not None
            return
        items = list(payloads)
        if any(_nbytes(p) >= SCATTER_THRESHOLD for p in items):
            for p in items:
                self.send_frame(p)
            return
        transport = self.transport
        assert transport is not None, "send_frames() before connection_made()"
        if items:
            transport.write(self._encode_many(items, self._layout))
