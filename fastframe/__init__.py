"""fastframe: length-prefixed frames over TCP, without the sticky-packet bugs.

The codec comes in two implementations with one face: the C extension ``fastframe._codec`` and the
pure-Python twin ``fastframe._codec_py``.  ``IMPLEMENTATION`` says which one is in use; setting the
environment variable ``FASTFRAME_PURE_PYTHON=1`` before import forces the twin.  On CPython a missing or
broken extension is never a silent fallback: the import warns and names the reason.
"""

from __future__ import annotations

import os
import platform
import sys
import warnings
from types import ModuleType
from typing import Optional

from ._framing import Framing
from ._version import __version__
from .exceptions import BufferTooSmall, FrameError, FrameTooLarge, IncompleteFrame

__all__ = [
    "BufferTooSmall",
    "DEFAULT_MAX_FRAME",
    "IMPLEMENTATION",
    "LARGE_FRAME",
    "PREFIXES",
    "Decoder",
    "FrameError",
    "FrameTooLarge",
    "FramedSocket",
    "Framing",
    "IncompleteFrame",
    "__version__",
    "encode",
    "encode_many",
    "header",
    "write_frames",
]


def _pure_requested() -> bool:
    return os.environ.get("FASTFRAME_PURE_PYTHON", "").strip().lower() not in ("", "0", "false", "no", "off")


_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
# A source checkout, imported from its root (the current directory leads sys.path): the servers live in the
# top-level servers/ directory, and the compiled codec, if built by `pip install .`, in site-packages.
_CHECKOUT = os.path.isfile(os.path.join(_ROOT, "pyproject.toml")) and os.path.isfile(
    os.path.join(_ROOT, "servers", "__init__.py")
)


def _installed_extension() -> Optional[ModuleType]:
    """For a source checkout without a build of its own: the compiled codec of the installed fastframe of the
    same version (what `pip install .` just built), loaded as ``fastframe._codec``."""
    from importlib import machinery, metadata, util

    for dist in metadata.distributions():
        if (dist.metadata["Name"] or "").lower() != "fastframe" or dist.version != __version__:
            continue
        for file in dist.files or ():
            parts = file.parts
            if len(parts) != 2 or parts[0] != "fastframe" or not parts[1].startswith("_codec."):
                continue
            if not any(parts[1].endswith(suffix) for suffix in machinery.EXTENSION_SUFFIXES):
                continue
            path = str(dist.locate_file(file))
            spec = util.spec_from_file_location(f"{__name__}._codec", path)
            if spec is None or spec.loader is None or os.path.dirname(path) == _HERE:
                continue
            module = util.module_from_spec(spec)
            sys.modules[spec.name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[spec.name]
                raise
            globals()["_codec"] = module  # as `from . import _codec` would have bound it
            return module
    return None


def _import_extension() -> ModuleType:
    try:
        from . import _codec

        return _codec
    except ImportError:
        if not _CHECKOUT:
            raise
        module = _installed_extension()
        if module is None:
            raise
        return module


IMPLEMENTATION: str
if _pure_requested():
    from . import _codec_py as _impl
    from ._codec_py import DEFAULT_MAX_FRAME, LARGE_FRAME, PREFIXES, Decoder, encode, encode_many, header, write_frames

    IMPLEMENTATION = "python"
else:
    try:
        _impl = _import_extension()
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
        from ._codec_py import (
            DEFAULT_MAX_FRAME,
            LARGE_FRAME,
            PREFIXES,
            Decoder,
            encode,
            encode_many,
            header,
            write_frames,
        )

        IMPLEMENTATION = "python"

from ._framed import FramedSocket  # noqa: E402  (needs the codec chosen above)

if _CHECKOUT and not os.path.isdir(os.path.join(_HERE, "servers")):
    # Installed, servers/ is the subpackage fastframe.servers; make a checkout behave the same.
    from importlib import util as _util

    _spec = _util.spec_from_file_location(
        f"{__name__}.servers",
        os.path.join(_ROOT, "servers", "__init__.py"),
        submodule_search_locations=[os.path.join(_ROOT, "servers")],
    )
    if _spec is not None and _spec.loader is not None and f"{__name__}.servers" not in sys.modules:
        servers = _util.module_from_spec(_spec)
        sys.modules[_spec.name] = servers
        _spec.loader.exec_module(servers)
