"""Pickles of arrays, read safely: ``load_pickle`` builds their content (refusing anything but arrays, lists, dicts,
strings and numbers: a pickle can run code), and ``byte_spans`` reads a pickled list of byte arrays (tieredImageNet's
PNGs) as where each item's bytes lie in the file, not as the bytes, so that a reader of a pickle larger than memory
holds only offsets, and whoever decodes an item reads its bytes from the file itself.
"""

import pickle
import pickletools
from typing import BinaryIO

import numpy as np

from data.sources import DataError

RECONSTRUCT = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}  # protocols 0 to 4
FROMBUFFER = {("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}  # protocol 5
DTYPE, ENCODE = ("numpy", "dtype"), ("_codecs", "encode")  # a pickle of protocol 2 or below holds bytes as encoded text
ALLOWED = {("numpy", "ndarray"), DTYPE, ENCODE, *RECONSTRUCT, *FROMBUFFER, ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}


class ArraysOnly(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and numpy arrays, and refuses anything else."""

    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name}: only arrays, lists and dicts are read")
        return super().find_class(module, name)


def load_pickle(stream: BinaryIO, where: str, encoding: str = "latin1"):
    """A pickle's content read from ``stream`` (a file is read as it is unpickled, never whole into memory first;
    Python 2 pickles too: their strings as ``encoding``), or a one-line error naming ``where``."""
    try:
        return ArraysOnly(stream, encoding=encoding).load()
    except Exception as e:  # truncated, not a pickle, or refused
        raise DataError(f"{where}: not a readable pickle of arrays ({type(e).__name__}: {e})") from None


Span = tuple[int, int]  # (offset, length) of an item's bytes in the file

# Opcodes whose argument is written as it is, after a length of this many bytes: an item's bytes can be read there.
VERBATIM = {"SHORT_BINBYTES": 1, "SHORT_BINSTRING": 1, "BINBYTES": 4, "BINSTRING": 4, "BINBYTES8": 8, "BYTEARRAY8": 8}
TEXT = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING"}  # Python 3 text, or escaped bytes
SMALL = 256  # a verbatim argument up to this long is kept as its value as well (a dtype's name, a byte order)
PUSH_CONSTANT = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False, "EMPTY_TUPLE": ()}
PUT, GET = {"PUT", "BINPUT", "LONG_BINPUT"}, {"GET", "BINGET", "LONG_BINGET"}
INTS = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"}
MARK = object()
DROPPED = object()  # a long text or bytes in the memo: never referred back to by a list of arrays, and not kept


class Verbatim:
    """A bytes argument as the reader sees it: where it lies, and its value when it is short."""

    __slots__ = ("span", "value")

    def __init__(self, span: Span, value):
        self.span, self.value = span, value

    def small(self):
        if self.value is None:
            raise ValueError(f"a value of {self.span[1]} bytes at offset {self.span[0]} where a short one was expected")
        return self.value


class Call:
    """A call the pickle makes (``REDUCE``) of an allowed function (an array's or a dtype's), never made: kept as
    its function, its arguments and the state ``BUILD`` gives it."""

    __slots__ = ("function", "args", "state")

    def __init__(self, function: tuple[str, str], args: tuple):
        self.function, self.args, self.state = function, args, None


def byte_spans(stream: BinaryIO, where: str) -> list[Span | bytes]:
    """Each item of the pickled list in ``stream`` (numpy arrays of one-byte items, or bytes): the span of its bytes
    in the file, or its bytes where the pickle does not hold them as they are (protocols 0 to 2 written by Python 3
    hold bytes as text). The opcodes are walked one by one and nothing is built but the list's skeleton, so the
    file's bytes are never all in memory; any other content is refused in one line naming ``where``."""
    try:
        items = walk(stream)
        if not isinstance(items, list):
            raise ValueError(f"expected a list, found {type(items).__name__}")
        return [item_bytes(item, index) for index, item in enumerate(items)]
    except Exception as e:
        raise DataError(f"{where}: not a readable pickle of a list of byte arrays ({type(e).__name__}: {e})") from None


def walk(stream: BinaryIO):
    """The pickle's object, with ``Verbatim`` for long bytes arguments and ``Call`` for the calls it makes."""
    stack: list = []
    memo: dict = {}
    for opcode, arg, position in pickletools.genops(stream):
        name = opcode.name
        if name in VERBATIM:
            span = (position + 1 + VERBATIM[name], len(arg))
            stack.append(Verbatim(span, arg if len(arg) <= SMALL else None))
        elif name in TEXT or name in INTS:
            stack.append(arg)
        elif name in PUSH_CONSTANT:
            stack.append(PUSH_CONSTANT[name])
        elif name in ("EMPTY_LIST", "EMPTY_DICT"):
            stack.append([] if name == "EMPTY_LIST" else {})
        elif name == "MARK":
            stack.append(MARK)
        elif name in ("TUPLE", "LIST", "APPENDS", "SETITEMS"):
            at = len(stack) - 1 - stack[::-1].index(MARK)
            items, stack[at:] = stack[at + 1 :], []
            if name == "APPENDS":
                stack[-1].extend(items)
            elif name == "SETITEMS":
                stack[-1].update(zip(items[::2], items[1::2], strict=True))
            else:
                stack.append(tuple(items) if name == "TUPLE" else items)
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items, stack[-n:] = tuple(stack[-n:]), []
            stack.append(items)
        elif name == "APPEND":
            item = stack.pop()
            stack[-1].append(item)
        elif name in ("GLOBAL", "STACK_GLOBAL"):
            if name == "GLOBAL":
                module, _, attribute = arg.partition(" ")
            else:
                attribute, module = stack.pop(), stack.pop()
            if (module, attribute) not in ALLOWED:
                raise ValueError(f"refusing {module}.{attribute}: only arrays, lists and dicts are read")
            stack.append((module, attribute))
        elif name == "SETITEM":
            value, key = stack.pop(), stack.pop()
            stack[-1][key] = value
        elif name == "REDUCE":
            args, function = stack.pop(), stack.pop()
            stack.append(called(function, args))
        elif name == "BUILD":
            state = stack.pop()
            if not isinstance(stack[-1], Call):
                raise ValueError(f"a state for a {type(stack[-1]).__name__}")
            stack[-1].state = state
        elif name in PUT or name == "MEMOIZE":
            value = stack[-1]
            memo[len(memo) if name == "MEMOIZE" else arg] = DROPPED if isinstance(value, (str, bytes)) and len(value) > SMALL else value
        elif name in GET:
            if memo[arg] is DROPPED:
                raise ValueError(f"memo {arg} refers back to a long string or bytes")
            stack.append(memo[arg])
        elif name == "STOP":
            return stack.pop()
        elif name not in ("PROTO", "FRAME"):
            raise ValueError(f"opcode {name} at offset {position}, which a list of arrays does not use")
    raise ValueError("no STOP")


def called(function, args) -> Call | bytes:
    """A ``REDUCE``: text encoded back to bytes is done here; arrays and dtypes are kept as calls, their state to come."""
    if function == ENCODE:
        text, encoding = args
        return text.encode(encoding)
    if function in RECONSTRUCT or function == DTYPE or function in FROMBUFFER:
        return Call(function, args)
    raise ValueError(f"a call of {function}")


def item_bytes(item, index: int) -> Span | bytes:
    """An item's bytes: a span of the file, or bytes; its dtype must have one-byte items, so its bytes are it."""
    if isinstance(item, Call) and (item.function in RECONSTRUCT or item.function in FROMBUFFER):
        if item.function in FROMBUFFER:
            data, dtype = item.args[0], item.args[1]
        elif isinstance(item.state, tuple) and len(item.state) in (4, 5):
            data, dtype = item.state[-1], item.state[-3]  # (version,) shape, dtype, fortran order, data
        else:
            raise ValueError(f"item {index}: an array without its state")
        if not (isinstance(dtype, Call) and dtype.function == DTYPE and np.dtype(small(dtype.args[0])).itemsize == 1):
            raise ValueError(f"item {index}: an array whose items are not single bytes")
        item = data
    if isinstance(item, Verbatim):
        return item.span
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):  # bytes a Python 2 pickle wrote as text, read back as latin-1
        return item.encode("latin1")
    raise ValueError(f"item {index}: a {type(item).__name__}, not an array of bytes")


def small(value):
    return value.small() if isinstance(value, Verbatim) else value


def read_span(stream: BinaryIO, span: Span, where: str) -> bytes:
    """The bytes at ``span`` of an open file, or a one-line error naming ``where`` if the file is shorter."""
    offset, length = span
    stream.seek(offset)
    raw = stream.read(length)
    if len(raw) != length:
        raise DataError(f"{where}: truncated ({len(raw)} of {length} bytes at offset {offset})")
    return raw
