"""The Erlang external term format (`:erlang.term_to_binary/1`), the subset the worker protocol uses.

None/True/False <-> nil/true/false; int; float; str <-> UTF-8 binary (a binary that is not UTF-8 comes back as
bytes); bytes -> binary; list <-> list; tuple <-> tuple; dict <-> map; `Atom` <-> atom.
"""

from __future__ import annotations

import struct
from typing import Any


class Atom(str):
    """An Erlang atom (other than nil/true/false, which map to None/True/False)."""


_VERSION = 131


def encode_term(value: Any) -> bytes:
    """Encodes `value` as `:erlang.term_to_binary/1` would."""
    out = bytearray([_VERSION])
    _encode(value, out)
    return bytes(out)


def _encode(value: Any, out: bytearray) -> None:
    if value is None or isinstance(value, (bool, Atom)):
        name = value if isinstance(value, Atom) else {None: "nil", True: "true", False: "false"}[value]
        data = name.encode("utf-8")
        out += (bytes([119, len(data)]) if len(data) < 256 else b"v" + struct.pack(">H", len(data))) + data
    elif isinstance(value, int):
        if 0 <= value < 256:
            out += bytes([97, value])
        elif -(2**31) <= value < 2**31:
            out += b"b" + struct.pack(">i", value)
        else:
            magnitude = abs(value)
            data = magnitude.to_bytes((magnitude.bit_length() + 7) // 8, "little")
            out += (b"n" + bytes([len(data)]) if len(data) < 256 else b"o" + struct.pack(">I", len(data)))
            out += bytes([value < 0]) + data
    elif isinstance(value, float):
        out += b"F" + struct.pack(">d", value)
    elif isinstance(value, (str, bytes, bytearray)):
        data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        out += b"m" + struct.pack(">I", len(data)) + data
    elif isinstance(value, tuple):
        out += bytes([104, len(value)]) if len(value) < 256 else b"i" + struct.pack(">I", len(value))
        for item in value:
            _encode(item, out)
    elif isinstance(value, list):
        if value:
            out += b"l" + struct.pack(">I", len(value))
            for item in value:
                _encode(item, out)
        out += b"j"
    elif isinstance(value, dict):
        out += b"t" + struct.pack(">I", len(value))
        for key, item in value.items():
            _encode(key, out)
            _encode(item, out)
    else:
        raise TypeError(f"Cannot send a {type(value).__name__} to an Elixir worker: {value!r}")


MAX_DEPTH = 100  # the protocol's replies nest a few levels; a hostile term (e.g. a Hex metadata.config) may not
_CONTAINERS = (104, 105, 108, 116)  # SMALL_TUPLE_EXT, LARGE_TUPLE_EXT, LIST_EXT, MAP_EXT


def decode_term(data: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """Decodes the output of `:erlang.term_to_binary/1` (uncompressed). Iterative, and a term nested deeper than
    `max_depth` lists, tuples or maps is a ValueError, so that no input exhausts Python's stack, here or in the
    code that walks the result."""
    if not data or data[0] != _VERSION:
        raise ValueError("Not an Erlang external term (bad version byte).")
    value, end = _decode(memoryview(data), 1, max_depth)
    if end != len(data):
        raise ValueError(f"Erlang external term has {len(data) - end} trailing bytes.")
    return value


_SPECIAL_ATOMS = {"nil": None, "true": True, "false": False}


def _decode(data: memoryview, i: int, max_depth: int) -> tuple[Any, int]:
    """The term starting at `i` and where it ends. Containers wait on a stack of [tag, items still to come,
    items so far] until their last item is decoded."""
    stack: list[list[Any]] = []
    while True:
        tag = data[i]
        i += 1
        if tag in _CONTAINERS:
            n, i = (data[i], i + 1) if tag == 104 else (struct.unpack_from(">I", data, i)[0], i + 4)
            if len(stack) == max_depth:
                raise ValueError(f"Erlang term nested deeper than {max_depth} levels.")
            expected = n + 1 if tag == 108 else 2 * n if tag == 116 else n  # a list's tail; a map's keys and values
            if expected:
                stack.append([tag, expected, []])
                continue
            value = _container(tag, [])
        else:
            value, i = _scalar(tag, data, i)
        while stack:  # hand the value to its container, closing every container it completes
            top = stack[-1]
            top[2].append(value)
            top[1] -= 1
            if top[1]:
                break
            stack.pop()
            value = _container(top[0], top[2])
        else:
            return value, i


def _container(tag: int, items: list[Any]) -> Any:
    if tag == 108:
        if items[-1] != []:
            raise ValueError("Improper lists cannot be decoded.")
        return items[:-1]
    if tag == 116:
        try:
            return dict(zip(items[0::2], items[1::2]))
        except TypeError:
            raise ValueError("An Erlang map with a list or map as a key cannot be decoded.") from None
    return tuple(items)


def _scalar(tag: int, data: memoryview, i: int) -> tuple[Any, int]:
    if tag == 97:  # SMALL_INTEGER_EXT
        return data[i], i + 1
    if tag == 98:  # INTEGER_EXT
        return struct.unpack_from(">i", data, i)[0], i + 4
    if tag in (110, 111):  # SMALL_BIG_EXT, LARGE_BIG_EXT
        n, i = (data[i], i + 1) if tag == 110 else (struct.unpack_from(">I", data, i)[0], i + 4)
        sign, digits = data[i], bytes(data[i + 1:i + 1 + n])
        magnitude = int.from_bytes(digits, "little")
        return (-magnitude if sign else magnitude), i + 1 + n
    if tag == 70:  # NEW_FLOAT_EXT
        return struct.unpack_from(">d", data, i)[0], i + 8
    if tag in (100, 118, 115, 119):  # ATOM_EXT, ATOM_UTF8_EXT, SMALL_ATOM_EXT, SMALL_ATOM_UTF8_EXT
        n, i = (struct.unpack_from(">H", data, i)[0], i + 2) if tag in (100, 118) else (data[i], i + 1)
        name = bytes(data[i:i + n]).decode("utf-8" if tag in (118, 119) else "latin-1")
        return (_SPECIAL_ATOMS[name] if name in _SPECIAL_ATOMS else Atom(name)), i + n
    if tag == 109:  # BINARY_EXT
        n = struct.unpack_from(">I", data, i)[0]
        raw = bytes(data[i + 4:i + 4 + n])
        try:
            return raw.decode("utf-8"), i + 4 + n
        except UnicodeDecodeError:
            return raw, i + 4 + n
    if tag == 106:  # NIL_EXT
        return [], i
    if tag == 107:  # STRING_EXT: a list of small integers
        n = struct.unpack_from(">H", data, i)[0]
        return list(data[i + 2:i + 2 + n]), i + 2 + n
    raise ValueError(f"Unsupported Erlang external term tag {tag} (pids, refs and funs cannot cross to Python).")
