"""The wire protocols' home (fastframe.wire): each message made and checked by the functions both ends use.

The services and clients are tested against each other elsewhere; these tests pin the bytes themselves
against the layouts the module docstrings specify, so that a change to a format cannot pass unnoticed by
changing both ends at once.
"""

from __future__ import annotations

import pytest

from fastframe.wire import errors


@pytest.mark.parametrize("code", sorted(errors.CODES))
def test_error_frame_round_trip(code: str) -> None:
    frame = errors.error_frame(code, "héllo wörld: it broke")
    assert frame == b"!" + code.encode() + b" " + "héllo wörld: it broke".encode()
    assert errors.is_error(frame)
    assert errors.parse_error(frame) == (code, "héllo wörld: it broke")
    assert f"``{code}``" in (errors.__doc__ or "")  # the table in the docstring lists it


def test_error_frame_refuses_an_unlisted_code() -> None:
    with pytest.raises(ValueError, match="unknown error code"):
        errors.error_frame("oops", "no such code")


@pytest.mark.parametrize("frame, parsed", [
    (b"!newer-code what a newer server says", ("newer-code", "what a newer server says")),
    (b"!auth", ("auth", "")),
    (b"!", ("", "")),
    (b"!busy \xff\xfe", ("busy", "\ufffd\ufffd")),
])  # fmt: skip
def test_parse_error_takes_any_frame(frame: bytes, parsed: tuple) -> None:
    assert errors.parse_error(frame) == parsed


def test_not_an_error() -> None:
    assert not errors.is_error(b"X0") and not errors.is_error(b"") and not errors.is_error(b"S{}")


def test_wire_error_frame_and_short() -> None:
    exc = errors.WireError("forbidden", f"{errors.short('x' * 200)} has a '..' component")
    code, message = errors.parse_error(exc.frame())
    assert code == "forbidden" and message == str(exc)
    assert message.startswith("'" + "x" * 80 + "...'")
