"""A check that a JPEG's compressed data is whole: libjpeg decodes corrupt data with a warning that PIL drops.

A byte changed, dropped or inserted in the middle of a JPEG's entropy-coded data desynchronises the Huffman decoder:
the blocks then end before the data does, or the data before the blocks, or a code matches no table entry. libjpeg
reports each as a warning ("Corrupt JPEG data: ...") and fills in the rest, and PIL ignores its warnings, so such an
image would decode to silent garbage. ``check`` walks the Huffman codes of every scan of a sequential (baseline or
extended) JPEG, without computing any pixel, and raises ``ValueError`` where they do not match the frame's blocks
exactly. Progressive and arithmetic-coded JPEGs are left to the decoder.
"""

import functools
import math
import re

import numpy as np

SEQUENTIAL_HUFFMAN = (0xC0, 0xC1)  # baseline, extended sequential
OTHER_FRAMES = {0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # progressive, lossless, arithmetic
SCAN_END = re.compile(rb"\xff(?![\x00\xd0-\xd7])")  # a marker that is not byte stuffing or a restart
RESTART = re.compile(rb"\xff([\xd0-\xd7])")
PEEK = 16  # the longest Huffman code
PAD = 64 * 32 // 8 + 2  # bytes: more than one block can read (64 codes of at most 16 bits, each with 16 more)
WINDOW = 1 << 14  # bytes of bit windows made at a time: memory stays small for a large photograph


@functools.lru_cache(maxsize=64)
def lookup(counts: bytes, symbols: bytes) -> list[tuple[int, int] | None]:
    """Each 16-bit prefix's (code length, symbol) for a canonical Huffman table; None where no code starts it."""
    table: list[tuple[int, int] | None] = [None] * (1 << PEEK)
    code, index = 0, 0
    for length, count in enumerate(counts, 1):
        for _ in range(count):
            if index >= len(symbols) or code >= 1 << length:
                raise ValueError("corrupt JPEG data: a Huffman table with more codes than fit")
            span = 1 << (PEEK - length)
            table[code * span : (code + 1) * span] = [(length, symbols[index])] * span
            code, index = code + 1, index + 1
        code <<= 1
    return table


def segments(raw: bytes):
    """(marker, payload) of each marker segment after SOI, up to EOI; each scan's header (0xDA) is followed by its
    entropy-coded data, as marker -1."""
    if not raw.startswith(b"\xff\xd8"):
        raise ValueError("not a JPEG")
    at = 2
    while at < len(raw):
        while at < len(raw) and raw[at] == 0xFF and at + 1 < len(raw) and raw[at + 1] == 0xFF:
            at += 1  # fill bytes before a marker
        if at + 1 >= len(raw) or raw[at] != 0xFF:
            raise ValueError(f"corrupt JPEG data: no marker at byte {at}")
        marker = raw[at + 1]
        if marker == 0xD9:
            return
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            at += 2
            continue
        length = int.from_bytes(raw[at + 2 : at + 4], "big")
        if length < 2 or at + 2 + length > len(raw):
            raise ValueError(f"corrupt JPEG data: a segment at byte {at} runs past the end")
        yield marker, raw[at + 4 : at + 2 + length]
        at += 2 + length
        if marker == 0xDA:
            found = SCAN_END.search(raw, at)
            if found is None:
                raise ValueError("corrupt JPEG data: the last scan has no end marker")
            yield -1, raw[at : found.start()]
            at = found.start()
    raise ValueError("corrupt JPEG data: no end-of-image marker")


def check(raw: bytes) -> None:
    """Raise ValueError unless every scan of a sequential Huffman-coded JPEG holds exactly the blocks its frame needs."""
    tables: dict[tuple[int, int], list] = {}
    frame: dict[int, tuple[int, int]] = {}  # component id -> (horizontal, vertical) sampling
    width = height = interval = 0
    scan: list[tuple[int, int, int]] = []  # (component id, DC table, AC table)
    for marker, payload in segments(raw):
        if marker in OTHER_FRAMES:
            return
        if marker in SEQUENTIAL_HUFFMAN:
            height, width = int.from_bytes(payload[1:3], "big"), int.from_bytes(payload[3:5], "big")
            frame = {payload[6 + 3 * i]: (payload[7 + 3 * i] >> 4, payload[7 + 3 * i] & 15) for i in range(payload[5])}
        elif marker == 0xC4:
            at = 0
            while at < len(payload):
                counts = payload[at + 1 : at + 17]
                tables[payload[at] >> 4, payload[at] & 15] = lookup(counts, payload[at + 17 : at + 17 + sum(counts)])
                at += 17 + sum(counts)
        elif marker == 0xDD:
            interval = int.from_bytes(payload[:2], "big")
        elif marker == 0xDA:
            scan = [(payload[1 + 2 * i], payload[2 + 2 * i] >> 4, payload[2 + 2 * i] & 15) for i in range(payload[0])]
        elif marker == -1:
            if not frame or not width or not height:
                return  # a frame this check does not read, or a DNL-defined height: left to the decoder
            check_scan(payload, frame, scan, tables, width, height, interval)


def check_scan(data: bytes, frame: dict, scan: list, tables: dict, width: int, height: int, interval: int) -> None:
    h_max, v_max = max(h for h, _ in frame.values()), max(v for _, v in frame.values())
    if len(scan) == 1:  # non-interleaved: one block per MCU, over the component's own size
        h, v = frame[scan[0][0]]
        mcus = math.ceil(math.ceil(width * h / h_max) / 8) * math.ceil(math.ceil(height * v / v_max) / 8)
        blocks = [scan[0][1:]]
    else:
        mcus = math.ceil(width / (8 * h_max)) * math.ceil(height / (8 * v_max))
        blocks = [(dc, ac) for c, dc, ac in scan for _ in range(frame[c][0] * frame[c][1])]
    try:
        blocks = [(tables[0, dc], tables[1, ac]) for dc, ac in blocks]
    except KeyError:
        raise ValueError("corrupt JPEG data: a scan uses a Huffman table that is not defined") from None
    parts = RESTART.split(data)
    pieces, markers = parts[::2], [m[0] for m in parts[1::2]]
    if any(m != 0xD0 + i % 8 for i, m in enumerate(markers)):
        raise ValueError("corrupt JPEG data: restart markers out of order")
    per_piece = interval or mcus
    if len(pieces) != math.ceil(mcus / per_piece):
        raise ValueError(f"corrupt JPEG data: {len(pieces)} restart intervals where the frame needs {math.ceil(mcus / per_piece)}")
    for i, piece in enumerate(pieces):
        walk(piece.replace(b"\xff\x00", b"\xff"), min(per_piece, mcus - i * per_piece), blocks)


def windows(piece: bytes, start: int) -> list[int]:
    """The 16 bits that start at each bit of ``WINDOW`` bytes of ``piece`` from byte ``start``, and of ``PAD`` more
    (zeros past its end: room for a garbled block to run on)."""
    padded = np.frombuffer(piece[start : start + WINDOW + PAD] + bytes(PAD + 2), np.uint8).astype(np.uint32)
    spans = padded[:-2] << 16 | padded[1:-1] << 8 | padded[2:]
    return ((spans[:, None] >> (8 - np.arange(8, dtype=np.uint32))) & 0xFFFF).ravel().tolist()


def walk(piece: bytes, mcus: int, blocks: list) -> None:
    """Decode ``mcus`` MCUs' Huffman codes from ``piece``: every code must be in its table, every coefficient inside its
    block, and the codes must end in the piece's last byte. Bits are looked up ``WINDOW`` bytes at a time."""
    total, at, start, bits = 8 * len(piece), 0, 0, windows(piece, 0)
    for _ in range(mcus):
        for dc, ac in blocks:
            if at - 8 * start >= 8 * WINDOW:  # a block reads less than PAD bytes: move the window before the next
                start = at >> 3
                bits = windows(piece, start)
            code = dc[bits[at - 8 * start]]
            if code is None:
                raise ValueError(f"corrupt JPEG data: no Huffman code at bit {at}")
            at += code[0] + code[1]
            k = 1
            while k < 64:
                code = ac[bits[at - 8 * start]]
                if code is None:
                    raise ValueError(f"corrupt JPEG data: no Huffman code at bit {at}")
                run, size = code[1] >> 4, code[1] & 15
                at += code[0] + size
                if size:
                    k += run + 1
                elif run == 15:
                    k += 16
                    if k >= 64:  # sixteen zeros are always followed by a coefficient
                        raise ValueError(f"corrupt JPEG data: a run of zeros past the end of its block at bit {at}")
                else:
                    break
                if k > 64:
                    raise ValueError(f"corrupt JPEG data: a coefficient past the end of its block at bit {at}")
            if at > total:
                raise ValueError("corrupt JPEG data: the compressed data ends before the image does")
    if total - at >= 8:
        raise ValueError(f"corrupt JPEG data: {(total - at) // 8} bytes left over after the last block")
