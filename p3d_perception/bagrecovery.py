# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Complete messages out of damaged rosbag2 storage files (MCAP and sqlite3).

A recording cut by a power loss or a full disk has no MCAP summary and footer (the
``rosbags`` reader then refuses the whole file), or an sqlite3 database whose b-tree
pages past the cut are missing (every SQL query then fails), and often no
metadata.yaml. Yet nearly all of it is intact: MCAP is a sequence of self-delimiting
records (opcode, length, body) whose chunks carry their own schemas and channels, and
an sqlite3 file is a sequence of fixed-size pages whose table leaves hold the rows.
So both are read here record by record / page by page, every complete message before
(and, where the structure allows, after) the damage is kept, and what stopped the scan
is reported. Both formats are documented (mcap.dev spec; sqlite.org/fileformat2.html);
nothing here trusts a length without checking it against the file first.
"""

from __future__ import annotations

import dataclasses
import logging
import mmap
from pathlib import Path
import struct
from typing import Any, Iterator
import zlib

log = logging.getLogger(__name__)

MCAP_MAGIC = b'\x89MCAP0\r\n'
SQLITE_MAGIC = b'SQLite format 3\x00'
#: A chunk that claims to decompress to more than this is corrupt, not a recording.
MAX_CHUNK_BYTES = 1 << 30
_OP_SCHEMA, _OP_CHANNEL, _OP_MESSAGE, _OP_CHUNK = 0x03, 0x04, 0x05, 0x06
_OP_FOOTER, _OP_DATA_END = 0x02, 0x0F
_COMPRESSIONS = ('', 'zstd', 'lz4')


class RecoveryError(ValueError):
    """The file is no MCAP or sqlite3 storage at all (nothing can be recovered)."""


@dataclasses.dataclass
class Recovery:
    """What a scan of one damaged storage file found, filled in while it runs."""

    path: str
    connections: dict[int, Any] = dataclasses.field(default_factory=dict)
    messages: int = 0
    damage: list[str] = dataclasses.field(default_factory=list)
    chunks_skipped: int = 0
    #: when a list: the file offset where each message given ends (uncompressed MCAP
    #: chunks: the message record's own end; compressed ones: the chunk's end), which
    #: tells how many messages were complete before a cut
    ends: list[int] | None = None


def _connection(cid: int, topic: str, msgtype: str, fmt: str = '', text: str = '',
                encoding: str = 'cdr'):
    from rosbags.interfaces import (
        Connection, ConnectionExtRosbag2, MessageDefinition, MessageDefinitionFormat)
    formats = {'ros2msg': MessageDefinitionFormat.MSG, 'ros2idl': MessageDefinitionFormat.IDL}
    return Connection(id=cid, topic=topic, msgtype=msgtype,
                      msgdef=MessageDefinition(formats.get(fmt, MessageDefinitionFormat.NONE),
                                               text),
                      digest='', msgcount=0,
                      ext=ConnectionExtRosbag2(serialization_format=encoding,
                                               offered_qos_profiles=[]),
                      owner=None)


# ------------------------------------------------------------------ MCAP

class _Cut(Exception):
    """A record or field runs past the end of the bytes at hand."""


def _u16(b, p): return int.from_bytes(b[p:p + 2], 'little')   # noqa: E704
def _u32(b, p): return int.from_bytes(b[p:p + 4], 'little')   # noqa: E704
def _u64(b, p): return int.from_bytes(b[p:p + 8], 'little')   # noqa: E704


def _string(b, p: int, end: int) -> tuple[str, int]:
    if p + 4 > end:
        raise _Cut
    n = _u32(b, p)
    if p + 4 + n > end:
        raise _Cut
    return bytes(b[p + 4:p + 4 + n]).decode('utf-8', errors='replace'), p + 4 + n


def _records(b, start: int, end: int, found: Recovery, where: str,
             schemas: dict) -> Iterator[tuple[int, int, bytes, int]]:
    """(channel id, log time, payload, record end) of the message records in b[start:end].

    Schema and Channel records on the way update ``schemas`` / ``found.connections``.
    A record that runs past ``end`` ends the scan: in a chunk cut by the end of the
    file that is where the complete messages stop.
    """
    p = start
    while p + 9 <= end:
        op, n = b[p], _u64(b, p + 1)
        body, nxt = p + 9, p + 9 + n
        if nxt > end:
            found.damage.append(f'{where}: a record at byte {p} runs past the end')
            return
        try:
            if op == _OP_MESSAGE:
                if n < 22:
                    raise _Cut
                yield _u16(b, body), _u64(b, body + 6), bytes(b[body + 22:nxt]), nxt
            elif op == _OP_SCHEMA:
                sid = _u16(b, body)
                name, q = _string(b, body + 2, nxt)
                enc, q = _string(b, q, nxt)
                if q + 4 > nxt or q + 4 + _u32(b, q) > nxt:
                    raise _Cut
                text = bytes(b[q + 4:q + 4 + _u32(b, q)]).decode('utf-8', errors='replace')
                schemas[sid] = (name, enc, text)
            elif op == _OP_CHANNEL:
                cid, sid = _u16(b, body), _u16(b, body + 2)
                topic, q = _string(b, body + 4, nxt)
                encoding, q = _string(b, q, nxt)
                if sid in schemas:
                    name, enc, text = schemas[sid]
                    found.connections[cid] = _connection(cid, topic, name, enc, text,
                                                         encoding)
                else:
                    found.damage.append(f'{where}: channel {topic!r} has no schema')
            elif op in (_OP_DATA_END, _OP_FOOTER):
                return
        except _Cut:
            found.damage.append(f'{where}: a malformed record (opcode {op:#x}) at byte {p}')
        p = nxt


def _decompress(data: bytes, compression: str, size: int, partial: bool) -> bytes:
    """A chunk's records; of a chunk cut short, as much as its first bytes give."""
    if compression == '':
        return data
    if compression == 'zstd':
        try:
            from compression import zstd
        except ImportError:
            from backports import zstd
        return zstd.ZstdDecompressor().decompress(data, max_length=size)
    import lz4.frame
    return lz4.frame.LZ4FrameDecompressor().decompress(data, max_length=size)


def _chunk(b, body: int, end: int, file_end: int, found: Recovery, schemas: dict
           ) -> Iterator[tuple[int, int, bytes, int]]:
    """Messages of the Chunk record whose body starts at ``body`` (it may be cut short)."""
    partial = end > file_end
    stop = min(end, file_end)
    if body + 32 > stop:
        raise _Cut
    usize, crc = _u64(b, body + 16), _u32(b, body + 24)
    compression, q = _string(b, body + 28, stop)
    if compression not in _COMPRESSIONS or usize > MAX_CHUNK_BYTES or q + 8 > stop:
        raise _Cut
    clen = _u64(b, q)
    q += 8
    if not partial and q + clen != end:
        raise _Cut
    data = bytes(b[q:min(q + clen, stop)])
    try:
        records = _decompress(data, compression, usize, partial)
    except Exception as exc:  # noqa: BLE001 - a corrupt block loses this chunk only
        found.damage.append(f'chunk at byte {body - 9}: cannot decompress ({exc})')
        found.chunks_skipped += 1
        return
    if not partial and crc and zlib.crc32(records) != crc:
        found.damage.append(f'chunk at byte {body - 9}: checksum mismatch (damaged bytes)')
        found.chunks_skipped += 1
        return
    where = f'chunk at byte {body - 9}' + (' (cut short)' if partial else '')
    for cid, stamp, raw, rec_end in _records(records, 0, len(records), found, where, schemas):
        yield cid, stamp, raw, (q + rec_end) if compression == '' else end


def _plausible_chunk(b, p: int, size: int) -> bool:
    """Whether a Chunk record starts at byte p: its length fields must agree exactly."""
    if p + 9 + 40 > size or b[p] != _OP_CHUNK:
        return False
    n = _u64(b, p + 1)
    body = p + 9
    clen_at = body + 28
    comp_len = _u32(b, clen_at)
    if comp_len > 4 or clen_at + 4 + comp_len + 8 > size:
        return False
    if bytes(b[clen_at + 4:clen_at + 4 + comp_len]).decode('latin-1') not in _COMPRESSIONS:
        return False
    return n == 40 + comp_len + _u64(b, clen_at + 4 + comp_len)


def scan_mcap(path: str | Path, found: Recovery) -> Iterator[tuple[Any, int, bytes]]:
    """(connection, log time, raw CDR) of every complete message, in file order.

    A record whose length is garbage (flipped bytes) is skipped by searching for the
    next record whose Chunk length fields agree; a chunk cut by the end of the file
    gives the messages it holds completely.
    """
    with open(path, 'rb') as fh:
        size = fh.seek(0, 2)
        if size < len(MCAP_MAGIC):
            raise RecoveryError(f'{path} is empty or shorter than an MCAP header')
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as b:
            if b[:8] != MCAP_MAGIC:
                raise RecoveryError(f'{path} is not an MCAP file (bad magic)')
            schemas: dict = {}
            p = 8
            while p + 9 <= size:
                op, n = b[p], _u64(b, p + 1)
                nxt = p + 9 + n
                if op in (_OP_DATA_END, _OP_FOOTER):
                    return
                try:
                    if op == _OP_CHUNK and (nxt <= size or _plausible_chunk(b, p, size)):
                        for cid, stamp, raw, end in _chunk(b, p + 9, nxt, size, found,
                                                           schemas):
                            conn = found.connections.get(cid)
                            if conn is None:
                                found.damage.append(f'a message of unknown channel {cid}')
                                continue
                            found.messages += 1
                            if found.ends is not None:
                                found.ends.append(end)
                            yield conn, stamp, raw
                        if nxt > size:
                            found.damage.append(f'cut short inside the chunk at byte {p}')
                            return
                        p = nxt
                        continue
                    if 0 < op <= 0x0F and nxt <= size:
                        if op in (_OP_SCHEMA, _OP_CHANNEL, _OP_MESSAGE):
                            for cid, stamp, raw, end in _records(b, p, nxt, found, 'file',
                                                                 schemas):
                                conn = found.connections.get(cid)
                                if conn is not None:
                                    found.messages += 1
                                    if found.ends is not None:
                                        found.ends.append(end)
                                    yield conn, stamp, raw
                        p = nxt
                        continue
                except _Cut:
                    pass
                if nxt > size and 0 < op <= 0x0F:
                    found.damage.append(f'cut short inside a record at byte {p}')
                    return
                # garbage where a record should start: find the next chunk
                found.damage.append(f'damaged record at byte {p}; searching for the next chunk')
                q = b.find(bytes([_OP_CHUNK]), p + 1)
                while q >= 0 and not _plausible_chunk(b, q, size):
                    q = b.find(bytes([_OP_CHUNK]), q + 1)
                if q < 0:
                    return
                p = q
            if p < size:
                found.damage.append(f'cut short at byte {p}')


# ------------------------------------------------------------------ sqlite3

def _varint(b, p: int) -> tuple[int, int]:
    v = 0
    for i in range(8):
        c = b[p + i]
        v = (v << 7) | (c & 0x7F)
        if c < 0x80:
            return v, p + i + 1
    return (v << 8) | b[p + 8], p + 9


def _int(raw: bytes) -> int:
    return int.from_bytes(raw, 'big', signed=True)


_INT_SIZES = {1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 8}


class _Sqlite:
    """Table rows straight from the pages of an sqlite3 file (no b-tree walk)."""

    def __init__(self, b, size: int) -> None:
        self.b = b
        ps = int.from_bytes(b[16:18], 'big')
        self.page_size = 65536 if ps == 1 else ps
        if self.page_size < 512 or self.page_size & (self.page_size - 1):
            raise RecoveryError(f'invalid sqlite3 page size {self.page_size}')
        self.usable = self.page_size - b[20]
        self.pages = size // self.page_size     # only complete pages

    def cells(self) -> Iterator[tuple[int, int, int]]:
        """(rowid, page, cell offset) of every table-leaf cell in the file."""
        b, ps = self.b, self.page_size
        for pg in range(self.pages):
            base = pg * ps
            hdr = base + (100 if pg == 0 else 0)
            if b[hdr] != 0x0D:
                continue
            ncells = int.from_bytes(b[hdr + 3:hdr + 5], 'big')
            for i in range(min(ncells, ps // 2)):
                ptr = int.from_bytes(b[hdr + 8 + 2 * i:hdr + 10 + 2 * i], 'big')
                if not 8 <= ptr < ps:
                    continue
                try:
                    _, q = _varint(b, base + ptr)
                    rowid, _ = _varint(b, q)
                except IndexError:
                    continue
                yield rowid, pg, base + ptr

    def payload(self, cell: int, limit: int | None = None) -> bytes | None:
        """A cell's record (first ``limit`` bytes); None if an overflow page is missing."""
        b, u = self.b, self.usable
        total, q = _varint(b, cell)
        _, q = _varint(b, q)
        x = u - 35
        if total <= x:
            local = total
        else:
            m = ((u - 12) * 32 // 255) - 23
            k = m + (total - m) % (u - 4)
            local = k if k <= x else m
        want = total if limit is None else min(total, limit)
        out = bytearray(b[q:q + min(local, want)])
        nxt = int.from_bytes(b[q + local:q + local + 4], 'big') if local < total else 0
        seen = set()
        while len(out) < want:
            if not 0 < nxt <= self.pages or nxt in seen:
                return None     # the chain runs into the missing part of the file
            seen.add(nxt)
            base = (nxt - 1) * self.page_size
            nxt = int.from_bytes(b[base:base + 4], 'big')
            out += b[base + 4:base + 4 + min(u - 4, want - len(out))]
        return bytes(out)

    @staticmethod
    def record(payload: bytes, blob: bool = True) -> list:
        """Values of a record (blobs as bytes); raises IndexError/ValueError if malformed."""
        hlen, p = _varint(payload, 0)
        types = []
        while p < hlen:
            t, p = _varint(payload, p)
            types.append(t)
        out, q = [], hlen
        for t in types:
            if t == 0:
                out.append(None)
            elif t in _INT_SIZES:
                n = _INT_SIZES[t]
                out.append(_int(payload[q:q + n]))
                q += n
            elif t == 7:
                out.append(struct.unpack('>d', payload[q:q + 8])[0])
                q += 8
            elif t in (8, 9):
                out.append(t - 8)
            elif t >= 12:
                n = (t - 12) // 2
                if q + n > len(payload) and (blob or t % 2):
                    raise ValueError('record shorter than its header')
                v = payload[q:q + n]
                out.append(v.decode('utf-8', errors='replace') if t % 2 else v)
                q += n
            else:
                raise ValueError(f'reserved serial type {t}')
        return out


def scan_sqlite(path: str | Path, found: Recovery) -> Iterator[tuple[Any, int, bytes]]:
    """(connection, timestamp, raw CDR) of every intact messages row, in rowid order.

    Rows are recognised by shape: topics rows are (id, name, type, 'cdr'...), messages
    rows (id, topic_id, timestamp, blob). A row whose overflow pages lie past the cut
    is incomplete and skipped.
    """
    with open(path, 'rb') as fh:
        size = fh.seek(0, 2)
        if size < 100:
            raise RecoveryError(f'{path} is empty or shorter than an sqlite3 header')
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as b:
            if b[:16] != SQLITE_MAGIC:
                raise RecoveryError(f'{path} is not an sqlite3 database (bad magic)')
            db = _Sqlite(b, size)
            if size % db.page_size:
                found.damage.append(f'file ends inside page {db.pages + 1} (cut short)')
            rows = []
            for rowid, _, cell in db.cells():
                try:
                    head = db.payload(cell, limit=512)
                    values = db.record(head, blob=False) if head else None
                except (IndexError, ValueError, struct.error):
                    continue
                if not values:
                    continue
                if (len(values) >= 5 and values[0] is None and all(
                        isinstance(v, str) for v in values[1:5]) and '/' in values[2]
                        and values[3] in ('cdr', 'cdr_be')):
                    found.connections[rowid] = _connection(rowid, values[1], values[2],
                                                           encoding=values[3])
                elif (len(values) == 4 and values[0] is None and isinstance(values[1], int)
                      and isinstance(values[2], int) and isinstance(values[3], bytes)):
                    rows.append((rowid, cell))
            rows.sort()
            lost = 0
            for rowid, cell in rows:
                try:
                    payload = db.payload(cell)
                    values = db.record(payload) if payload is not None else None
                except (IndexError, ValueError, struct.error):
                    values = None
                if values is None:
                    lost += 1
                    continue
                conn = found.connections.get(values[1])
                if conn is None:
                    lost += 1
                    continue
                found.messages += 1
                yield conn, int(values[2]), bytes(values[3])
            if lost:
                found.damage.append(f'{lost} row(s) with pages past the cut or no topic')


def scan_storage(path: str | Path, found: Recovery) -> Iterator[tuple[Any, int, bytes]]:
    """Complete messages of one storage file, whichever of the two formats it is."""
    with open(path, 'rb') as fh:
        magic = fh.read(16)
    if magic.startswith(MCAP_MAGIC):
        return scan_mcap(path, found)
    if magic == SQLITE_MAGIC:
        return scan_sqlite(path, found)
    raise RecoveryError(f'{path} is neither an MCAP file nor an sqlite3 database')
