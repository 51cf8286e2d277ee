"""JSON as feeds may send it, parsed strictly and safely.

`json.loads` accepts duplicate keys (the last wins, silently), `NaN` and `Infinity`,
integers of any length, and recurses once per nesting level (a line nested a few thousand
deep raises `RecursionError`). A feed line is one flat event, so `loads_strict` refuses
all of that with a `ValueError` whose message names the problem and the position but
never repeats the content (which may be personal data).
"""

from __future__ import annotations

import json
import json.encoder as json_encoder
from collections.abc import Callable
from typing import Any

MAX_DEPTH = 20
MAX_INT_DIGITS = 18


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                # The key is a field name, not a value: safe to show, but keep it short.
                name = key if len(key) <= 40 and key.isprintable() else ascii(key[:40])
                raise ValueError(f"duplicate key {name!r} in one object")
            seen.add(key)
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of more than {MAX_INT_DIGITS} digits")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError("a number too large to represent")
    return value


# One decoder for every call: `json.loads` with hooks builds a new one each time, which
# costs as much as the parse of a feed line.
_DECODER = json.JSONDecoder(
    object_pairs_hook=_no_duplicates,
    parse_constant=_no_constant,
    parse_int=_bounded_int,
    parse_float=_finite_float,
)


def nesting_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in JSON text (brackets in strings ignored)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def loads_strict(text: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON text, refusing duplicate keys, deep nesting, NaN/Infinity and huge numbers."""
    if isinstance(text, bytes | bytearray):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"not UTF-8 text (byte {exc.start + 1})") from None
    # Counting brackets is cheap and bounds the depth from above; scan only when it must.
    if text.count("[") + text.count("{") > max_depth and nesting_depth(text) > max_depth:
        raise ValueError(f"nested more than {max_depth} levels deep")
    if text.startswith("\ufeff"):  # json.loads would say "decode using utf-8-sig"
        raise ValueError("invalid JSON: starts with a byte order mark (U+FEFF)")
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        # "Unterminated string starting at": json's text ends where the column goes.
        reason = exc.msg.removesuffix(" at")
        raise ValueError(f"invalid JSON: {reason} at column {exc.colno}") from None
    except RecursionError:  # pragma: no cover - the depth check above comes first
        raise ValueError(f"nested more than {max_depth} levels deep") from None


def one_shot(encoder: json.JSONEncoder) -> Callable[[Any], str]:
    """`encoder.encode` for containers, without building the C encoder on every call.

    `JSONEncoder.encode` makes a new C encoder per call, which costs as much as encoding
    a feed event; this one is made once, from the encoder's own settings, so the text is
    the same for data without reference cycles (which JSON values decoded from text or
    validated events never have). Falls back to `encoder.encode` where the C accelerator
    is missing.
    """
    make = json_encoder.c_make_encoder
    if make is None or encoder.indent is not None:
        return encoder.encode
    chunks = make(
        None,  # no circular-reference markers: a dict reused after an error could go stale
        encoder.default,
        json_encoder.encode_basestring_ascii
        if encoder.ensure_ascii
        else json_encoder.encode_basestring,
        encoder.indent,
        encoder.key_separator,
        encoder.item_separator,
        encoder.sort_keys,
        encoder.skipkeys,
        encoder.allow_nan,
    )
    return lambda value: "".join(chunks(value, 0))
