"""A pickled list of byte arrays read as the spans of its file that hold each item's bytes: the same bytes as Python's
own unpickler reads, in every protocol and in Python 2's form (tieredImageNet's pickles), without the file's bytes
ever in memory, and anything else refused in one line."""

import io
import pickle
import struct
import tracemalloc

import numpy as np
import pytest

from data.pickled import byte_spans, load_pickle, read_span
from data.sources import DataError


def python2_pickle(arrays: list[np.ndarray]) -> bytes:
    """``arrays`` as Python 2's cPickle writes them at its highest protocol (2): bytes as ``str``, the array's data
    one ``BINSTRING`` or ``SHORT_BINSTRING`` (written by hand: Python 3 cannot write this form)."""

    def string(value: bytes) -> bytes:
        return b"U" + bytes([len(value)]) + value if len(value) < 256 else b"T" + struct.pack("<i", len(value)) + value

    out = [b"\x80\x02]q\x00("]
    for array in arrays:
        out += [b"cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\nq\x02K\x00\x85", string(b"b"), b"\x87R("]
        out += [b"K\x01J" + struct.pack("<i", len(array)) + b"K\x01\x86cnumpy\ndtype\n", string(b"u1"), b"K\x00K\x01\x87R("]
        out += [b"K\x03", string(b"|"), b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89", string(array.tobytes()), b"tb"]
    out.append(b"e.")
    return b"".join(out)


def arrays_of(sizes: list[int]) -> list[np.ndarray]:
    return [np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).reshape(-1, 1) for size in sizes]


FORMS = {f"protocol {p}": (lambda arrays, p=p: pickle.dumps(arrays, protocol=p)) for p in range(6)} | {"python 2": python2_pickle}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_each_items_bytes_are_the_bytes_pythons_unpickler_reads(form):
    arrays = arrays_of([3, 200, 255, 256, 1000, 70_000])
    content = FORMS[form](arrays)
    stream = io.BytesIO(content)
    expected = [array.tobytes() for array in load_pickle(io.BytesIO(content), "reference")]
    assert expected == [array.tobytes() for array in arrays]  # the hand-written Python 2 form reads back as written
    spans = byte_spans(stream, "p.pkl")
    assert [item if isinstance(item, bytes) else read_span(stream, item, "p.pkl") for item in spans] == expected
    # protocols 3 on and Python 2 hold bytes as they are: the reader keeps where, never what (protocols 0 to 2 of
    # Python 3 hold them as text, which has to be read)
    assert all(isinstance(item, tuple) for item in spans) == (form == "python 2" or int(form[-1]) >= 3)


def test_a_list_of_plain_bytes_reads_as_spans_too():
    items = [b"x" * 10, b"y" * 300]
    stream = io.BytesIO(pickle.dumps(items, protocol=4))
    assert [read_span(stream, span, "p") for span in byte_spans(stream, "p")] == items


def test_reading_a_pickle_holds_none_of_its_bytes(tmp_path):
    path = tmp_path / "big.pkl"
    path.write_bytes(pickle.dumps(arrays_of([2 << 20] * 32), protocol=4))  # 64 MiB of arrays
    tracemalloc.start()
    with open(path, "rb") as stream:
        spans = byte_spans(stream, str(path))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(spans) == 32 and peak < 5 << 20  # one item's bytes as they are read past, where loading holds 64 MiB


@pytest.mark.parametrize(
    "content, says",
    [
        (pickle.dumps({"a": np.zeros(3, np.uint8)}), r"expected a list, found dict"),
        (pickle.dumps([np.zeros(3, np.float32)]), r"item 0: an array whose items are not single bytes"),
        (pickle.dumps([1.5]), r"opcode BINFLOAT at offset \d+, which a list of arrays does not use"),
        (b"\x80\x02]q\x00cos\nsystem\nq\x01a.", r"refusing os.system: only arrays, lists and dicts are read"),
        (pickle.dumps([np.zeros(3, np.uint8)])[:-5], r"pickle exhausted before seeing STOP"),
    ],
    ids=["a dict", "float arrays", "floats", "code", "truncated"],
)
def test_anything_but_a_list_of_byte_arrays_is_refused_in_one_line_naming_the_file(content, says):
    with pytest.raises(DataError, match=rf"^images.pkl: not a readable pickle of a list of byte arrays \(\w+: {says}\)$"):
        byte_spans(io.BytesIO(content), "images.pkl")


def test_a_span_beyond_the_file_is_one_line_naming_it():
    with pytest.raises(DataError, match=r"^images.pkl image 3: truncated \(2 of 10 bytes at offset 4\)$"):
        read_span(io.BytesIO(b"abcdef"), (4, 10), "images.pkl image 3")
