"""Which codec this process uses: the C extension ``fastframe._codec`` or the pure-Python twin ``_codec_py``.

The choice is made once, here, at import; the package (``fastframe/__init__.py``), ``FramedSocket`` and
``fastframe.aio`` all take the chosen module from this one place (``codec``) and never from each other.

1. ``FASTFRAME_PURE_PYTHON=1`` (or ``true``/``yes``/``on``) in the environment forces the twin, silently.
2. Otherwise the extension is imported.  If it is not there, and this copy of fastframe was built without
   extensions on purpose (``FASTFRAME_NO_EXTENSIONS=1`` at build time: setup.py then writes
   ``fastframe/_build_info.py`` with ``EXTENSIONS = False`` into the built package), the twin is used
   silently.
3. In every other case a missing or broken extension is never a silent fallback on CPython: the twin is
   used and a ``RuntimeWarning`` names the real cause (not installed, or the loader's own message for a
   ``.so`` that exists but cannot be loaded).  Only a ``ModuleNotFoundError`` for ``fastframe._codec`` itself
   counts as "missing"; any other import error, including one raised while the extension initialises, is
   "broken" and is reported as such (msgpack#481 is what a silent fallback costs users).

``IMPLEMENTATION`` is ``"cython"`` or ``"python"`` and always tells the truth.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType

__all__ = [
    "DEFAULT_MAX_FRAME",
    "IMPLEMENTATION",
    "LARGE_FRAME",
    "PREFIXES",
    "Decoder",
    "built_without_extensions",
    "codec",
    "encode",
    "encode_many",
    "header",
    "write_frames",
]

_EXTENSION = f"{__package__}._codec"


def _import(name: str) -> ModuleType:
    """``importlib.import_module(name)`` for an absolute name, by the same machinery, without importing importlib
    and warnings at start-up (a client command's start-up is most of a small request)."""
    __import__(name)
    return sys.modules[name]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def built_without_extensions() -> bool:
    """True when this copy of fastframe was built with ``FASTFRAME_NO_EXTENSIONS=1`` (pure by choice)."""
    try:
        info = _import(f"{__package__}._build_info")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}._build_info":
            raise
        return False  # an ordinary build, or a source tree: the extension is expected
    return getattr(info, "EXTENSIONS", True) is False


def _choose() -> tuple[ModuleType, str]:
    if _env_flag("FASTFRAME_PURE_PYTHON"):
        return _import(f"{__package__}._codec_py"), "python"
    try:
        return _import(_EXTENSION), "cython"
    except ImportError as exc:
        missing = isinstance(exc, ModuleNotFoundError) and exc.name == _EXTENSION
        if missing and built_without_extensions():
            pass  # built pure on purpose: nothing to warn about
        elif not missing or sys.implementation.name == "cpython":
            if missing:
                why = (
                    f"the C extension {_EXTENSION} is not installed in {os.path.dirname(__file__)} ({exc}): a build "
                    "that did not compile it, or a source tree imported without `pip install -e .`"
                )
            else:
                why = f"the C extension {_EXTENSION} is installed but failed to load ({exc})"
            import warnings

            warnings.warn(
                f"fastframe: {why}. Using the pure-Python codec, which is slower. Reinstall fastframe; to run without "
                "the extension on purpose, build it with FASTFRAME_NO_EXTENSIONS=1 or set FASTFRAME_PURE_PYTHON=1.",
                RuntimeWarning,
                stacklevel=4,
            )
        return _import(f"{__package__}._codec_py"), "python"


codec: ModuleType
IMPLEMENTATION: str
codec, IMPLEMENTATION = _choose()

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (a start-up cost for the CLI)
if TYPE_CHECKING:  # one face for both: static tools see the extension's stub, _codec.pyi
    from ._codec import DEFAULT_MAX_FRAME, LARGE_FRAME, PREFIXES, Decoder, encode, encode_many, header, write_frames
else:
    DEFAULT_MAX_FRAME = codec.DEFAULT_MAX_FRAME
    LARGE_FRAME = codec.LARGE_FRAME
    PREFIXES = codec.PREFIXES
    Decoder = codec.Decoder
    encode = codec.encode
    encode_many = codec.encode_many
    header = codec.header
    write_frames = codec.write_frames
