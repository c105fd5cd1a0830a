"""fastframe: length-prefixed frames over TCP, without the sticky-packet bugs.

The codec comes in two implementations with one face: the C extension ``fastframe._codec`` and the
pure-Python twin ``fastframe._codec_py``.  ``IMPLEMENTATION`` says which one is in use; setting the
environment variable ``FASTFRAME_PURE_PYTHON=1`` before import forces the twin.  On CPython a missing or
broken extension is never a silent fallback: the import warns and names the reason.
"""

from __future__ import annotations

import os
import platform
import warnings

from ._version import __version__
from .exceptions import FrameError, FrameTooLarge, IncompleteFrame

__all__ = [
    "DEFAULT_MAX_FRAME",
    "IMPLEMENTATION",
    "LARGE_FRAME",
    "PREFIXES",
    "Decoder",
    "FrameError",
    "FrameTooLarge",
    "FramedSocket",
    "IncompleteFrame",
    "__version__",
    "encode",
    "encode_many",
    "header",
    "write_frames",
]


def _pure_requested() -> bool:
    return os.environ.get("FASTFRAME_PURE_PYTHON", "").strip().lower() not in ("", "0", "false", "no", "off")


IMPLEMENTATION: str
if _pure_requested():
    from . import _codec_py as _impl
    from ._codec_py import DEFAULT_MAX_FRAME, LARGE_FRAME, PREFIXES, Decoder, encode, encode_many, header, write_frames

    IMPLEMENTATION = "python"
else:
    try:
        from . import _codec as _impl  # type: ignore[no-redef]
        from ._codec import (  # type: ignore[assignment]
            DEFAULT_MAX_FRAME,
            LARGE_FRAME,
            PREFIXES,
            Decoder,
            encode,
            encode_many,
            header,
            write_frames,
        )

        IMPLEMENTATION = "cython"
    except ImportError as exc:
        # Missing (a source checkout that was never built) or broken (built for another Python, a bad
        # .so): either way the user is about to get the slow twin, and must hear why.
        if platform.python_implementation() == "CPython" or not isinstance(exc, ModuleNotFoundError):
            warnings.warn(
                f"fastframe: the C extension could not be imported ({exc}); using the pure-Python codec. "
                "Reinstall fastframe with a compiler available, or set FASTFRAME_PURE_PYTHON=1 to silence this.",
                RuntimeWarning,
                stacklevel=2,
            )
        from . import _codec_py as _impl  # noqa: F401  (FramedSocket and aio use the chosen module)
        from ._codec_py import DEFAULT_MAX_FRAME, LARGE_FRAME, PREFIXES, Decoder, encode, encode_many, header, write_frames

        IMPLEMENTATION = "python"

from ._framed import FramedSocket  # noqa: E402  (needs the codec chosen above)
