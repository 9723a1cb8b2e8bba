# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""PCD files (ascii, binary, binary_compressed) read and checked by the project itself.

A PCD header states every size the reader will allocate, and headers come from many
writers, disks and half-finished copies. A reader that trusts them allocates what a
corrupt header claims (a ``COUNT`` of 10^9, an LZF block declaring 60 M points) before
any check, or reads a file whose ``POINTS`` or ``WIDTH`` lie as if nothing were wrong.
So here every size is derived from the header, checked for consistency, against the
file's length and against ``max_points`` *before* anything is allocated, and every
inconsistency is a :class:`~p3d_perception.cloud.CloudError` that names the line at
fault. LZF, the codec of ``binary_compressed``, is decoded here as well, so that the
declared output size is checked before the output buffer exists.

Layout of the result: one structured array, little-endian, fields packed in header
order; a field with ``COUNT k > 1`` is one (k,)-subarray field (as a PointCloud2 field
with ``count k`` decodes), and PCL's ``_`` padding fields become ``_0``, ``_1``, ...
"""

from __future__ import annotations

from dataclasses import dataclass
import io
import logging
import math
from pathlib import Path
import struct
import warnings

import numpy as np

from p3d_perception.cloud import (
    CloudError, CloudTooLargeError, DEFAULT_MAX_POINTS, EmptyCloudError, MAX_FIELDS,
    MAX_POINT_STEP)

log = logging.getLogger(__name__)

#: A header is a dozen short lines; past this many bytes without a DATA line the file
#: is not a PCD file (or its header is corrupt), and it is not scanned further.
MAX_HEADER_BYTES = 1 << 20
#: One LZF back-reference (3 bytes) produces at most 264 bytes: a block that claims
#: more than this ratio cannot be LZF, whatever its header says.
LZF_MAX_RATIO = 88
#: PCL pads a binary file to its page size with zeros; more than this after the data
#: means the header's sizes are wrong.
PAD_BYTES = 4096
VERSIONS = ('0.7', '.7', '0.6', '.6', '0.5', '.5')
DATA_KINDS = ('ascii', 'binary', 'binary_compressed')
_TYPES = {('I', 1): 'i1', ('I', 2): 'i2', ('I', 4): 'i4', ('I', 8): 'i8',
          ('U', 1): 'u1', ('U', 2): 'u2', ('U', 4): 'u4', ('U', 8): 'u8',
          ('F', 4): 'f4', ('F', 8): 'f8'}
_KEYS = ('VERSION', 'FIELDS', 'SIZE', 'TYPE', 'COUNT', 'WIDTH', 'HEIGHT', 'VIEWPOINT',
         'POINTS', 'DATA')


@dataclass(frozen=True)
class PcdHeader:
    """A checked PCD header: sizes are consistent with each other and with the limits."""

    version: str
    fields: tuple[str, ...]
    sizes: tuple[int, ...]
    types: tuple[str, ...]
    counts: tuple[int, ...]
    width: int
    height: int
    viewpoint: tuple[float, ...]
    points: int
    data: str
    data_offset: int

    @property
    def point_size(self) -> int:
        return sum(s * c for s, c in zip(self.sizes, self.counts))

    def dtype(self) -> np.dtype:
        """Packed little-endian structured dtype of one point (padding named _0, _1...)."""
        names, formats, pad = [], [], 0
        for name, size, kind, count in zip(self.fields, self.sizes, self.types, self.counts):
            if name == '_':
                name, pad = f'_{pad}', pad + 1
            base = np.dtype('<' + _TYPES[(kind, size)])
            names.append(name)
            formats.append(base if count == 1 else np.dtype((base, (count,))))
        return np.dtype({'names': names, 'formats': formats})


def _where(path: str | Path, line: int | None = None) -> str:
    return f'PCD file {path}' + (f', header line {line}' if line else '')


def _ints(values: list[str], key: str, where: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in values)
    except ValueError:
        raise CloudError(f'{where}: {key} must be integers, got {" ".join(values)[:80]!r}'
                         ) from None


def parse_header(head: bytes, path: str | Path = '<bytes>') -> PcdHeader:
    """Parse and check the header at the start of ``head`` (the file's first bytes).

    Raises CloudError naming the line and what is inconsistent; sizes are checked
    against each other here, against the file and the point limit by the readers.
    """
    found: dict[str, tuple[int, list[str]]] = {}
    offset, number = 0, 0
    data_offset = None
    while offset < len(head):
        end = head.find(b'\n', offset)
        if end < 0:
            break  # an unterminated last line cannot be a DATA line followed by data
        raw = head[offset:end]
        offset = end + 1
        number += 1
        try:
            line = raw.decode('ascii').strip()
        except UnicodeDecodeError:
            raise CloudError(f'{_where(path, number)} is not text: not a PCD file, or its '
                             'header is damaged') from None
        if not line or line.startswith('#'):
            continue
        key, *values = line.split()
        key = key.upper()
        if key not in _KEYS:
            raise CloudError(f'{_where(path, number)}: unknown header key {key[:40]!r} '
                             f'(expected one of {", ".join(_KEYS)}): not a PCD file, or '
                             'its header is damaged')
        if key in found:
            raise CloudError(f'{_where(path, number)}: {key} appears twice (first on line '
                             f'{found[key][0]})')
        found[key] = (number, values)
        if key == 'DATA':
            data_offset = offset
            break
    if data_offset is None:
        limit = ' within the first 1 MiB' if len(head) >= MAX_HEADER_BYTES else ''
        raise CloudError(f'{_where(path)} has no DATA line{limit}: not a PCD file, or its '
                         'header is cut short')
    where = _where(path)
    for key in ('FIELDS', 'SIZE', 'TYPE', 'WIDTH', 'DATA'):
        if key not in found:
            raise CloudError(f'{where}: the header has no {key} line')

    def one(key: str) -> str:
        line, values = found[key]
        if len(values) != 1:
            raise CloudError(f'{_where(path, line)}: {key} takes one value, got '
                             f'{len(values)}')
        return values[0]

    version = one('VERSION') if 'VERSION' in found else '0.7'
    if version not in VERSIONS:
        raise CloudError(f'{_where(path, found["VERSION"][0])}: unsupported VERSION '
                         f'{version[:20]!r} (expected 0.5 to 0.7)')
    fields = tuple(found['FIELDS'][1])
    if not fields:
        raise CloudError(f'{_where(path, found["FIELDS"][0])}: FIELDS names no field')
    if len(fields) > MAX_FIELDS:
        raise CloudError(f'{_where(path, found["FIELDS"][0])}: {len(fields)} fields, more '
                         f'than {MAX_FIELDS}: a corrupt header')
    named = [f for f in fields if f != '_']
    if len(set(named)) != len(named):
        dup = sorted({f for f in named if named.count(f) > 1})
        raise CloudError(f'{_where(path, found["FIELDS"][0])}: duplicate field name(s) '
                         f'{", ".join(dup)[:80]}')
    sizes = _ints(found['SIZE'][1], 'SIZE', _where(path, found['SIZE'][0]))
    types = tuple(t.upper() for t in found['TYPE'][1])
    if 'COUNT' in found:
        counts = _ints(found['COUNT'][1], 'COUNT', _where(path, found['COUNT'][0]))
    else:
        counts = (1,) * len(fields)
    for key, values in (('SIZE', sizes), ('TYPE', types), ('COUNT', counts)):
        if len(values) != len(fields):
            line = found[key][0] if key in found else None
            raise CloudError(f'{_where(path, line)}: {key} has {len(values)} value(s) for '
                             f'{len(fields)} field(s)')
    for name, size, kind, count in zip(fields, sizes, types, counts):
        if (kind, size) not in _TYPES:
            raise CloudError(f'{where}: field {name!r} has TYPE {kind[:8]!r} with SIZE {size} '
                             '(expected I/U with 1, 2, 4, 8 or F with 4, 8)')
        if count < 1:
            raise CloudError(f'{where}: field {name!r} has COUNT {count} (must be >= 1)')
    point_size = sum(s * c for s, c in zip(sizes, counts))
    if point_size > MAX_POINT_STEP:
        raise CloudError(f'{where}: SIZE x COUNT gives {point_size} bytes per point, more than '
                         f'{MAX_POINT_STEP}: a corrupt SIZE or COUNT line')
    width = _ints([one('WIDTH')], 'WIDTH', _where(path, found['WIDTH'][0]))[0]
    height = (_ints([one('HEIGHT')], 'HEIGHT', _where(path, found['HEIGHT'][0]))[0]
              if 'HEIGHT' in found else 1)
    if width < 0 or height < 0:
        raise CloudError(f'{where}: negative WIDTH {width} or HEIGHT {height}')
    if 'POINTS' in found:
        points = _ints([one('POINTS')], 'POINTS', _where(path, found['POINTS'][0]))[0]
        if points != width * height:
            raise CloudError(f'{where}: POINTS {points} differs from WIDTH x HEIGHT = '
                             f'{width} x {height} = {width * height}')
    else:
        points = width * height
    viewpoint = (0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0)
    if 'VIEWPOINT' in found:
        line, values = found['VIEWPOINT']
        try:
            viewpoint = tuple(float(v) for v in values)
        except ValueError:
            viewpoint = ()
        if len(viewpoint) != 7 or not all(math.isfinite(v) for v in viewpoint):
            raise CloudError(f'{_where(path, line)}: VIEWPOINT must be 7 finite numbers '
                             '(tx ty tz qw qx qy qz)')
    data = one('DATA').lower()
    if data not in DATA_KINDS:
        raise CloudError(f'{_where(path, found["DATA"][0])}: unknown DATA {data[:30]!r} '
                         f'(expected {", ".join(DATA_KINDS)})')
    return PcdHeader(version, fields, sizes, types, counts, width, height, viewpoint, points,
                     data, data_offset)


def lzf_decompress(src: bytes, size: int) -> bytearray:
    """LZF-decode ``src`` into exactly ``size`` bytes, or raise CloudError.

    The output buffer is allocated once at the declared size (which the caller has
    checked against its limits); a stream that would write past it, refer before its
    start, or end early is refused instead of growing or reading out of bounds.
    LZF: a control byte below 32 starts a run of ctrl+1 literal bytes; otherwise the
    top 3 bits are a length (7 = one more length byte) and the rest with the next byte
    a distance back into the output, copied byte by byte (so it may overlap itself).
    """
    if size < 0:
        raise CloudError(f'LZF: negative output size {size}')
    out = bytearray(size)
    ip = op = 0
    n = len(src)
    try:
        while ip < n:
            c = src[ip]
            if c < 32:
                ip += 1
                end, e = ip + c + 1, op + c + 1
                if end > n:
                    raise CloudError(f'LZF: literal run at byte {ip - 1} passes the end of '
                                     'the compressed data (cut short?)')
                if e > size:
                    raise CloudError(f'LZF: data decodes to more than the declared {size} '
                                     'bytes')
                out[op:e] = src[ip:end]
                ip, op = end, e
                continue
            if c >= 224:
                ln = src[ip + 1] + 9
                d = ((c & 31) << 8) + src[ip + 2] + 1
                ip += 3
            else:
                ln = (c >> 5) + 2
                d = ((c & 31) << 8) + src[ip + 1] + 1
                ip += 2
            r, e = op - d, op + ln
            if r < 0:
                raise CloudError(f'LZF: back-reference at byte {ip} points {d} bytes back, '
                                 f'before the start of the output ({op} bytes so far)')
            if e > size:
                raise CloudError(f'LZF: data decodes to more than the declared {size} bytes')
            if d >= ln:
                out[op:e] = out[r:r + ln]
            else:  # overlapping copy: the last d bytes repeat
                out[op:e] = (out[r:op] * (ln // d + 1))[:ln]
            op = e
    except IndexError:
        raise CloudError('LZF: the compressed data ends inside a back-reference (cut short?)'
                         ) from None
    if op != size:
        raise CloudError(f'LZF: data decodes to {op} bytes, the header declares {size}')
    return out


def lzf_store(data: bytes) -> bytes:
    """Valid LZF of ``data`` made of literal runs only (no compression).

    Enough to write binary_compressed files that any PCD reader accepts (the tests and
    the robustness benchmark build their files with it); the project never needs to
    write compressed scans itself.
    """
    out = bytearray()
    for i in range(0, len(data), 32):
        block = data[i:i + 32]
        out.append(len(block) - 1)
        out += block
    return bytes(out)


def _check_points(header: PcdHeader, path: str | Path, max_points: int | None) -> None:
    limit = DEFAULT_MAX_POINTS if max_points is None else int(max_points)
    if header.points == 0:
        raise EmptyCloudError(f'{_where(path)} holds no points')
    if header.points > limit:
        raise CloudTooLargeError(
            f'{_where(path)} declares {header.points} points, more than max_points={limit}; '
            'refusing to read it (raise max_points if this size is intended)')


def _only_padding(fh) -> bool:
    """Whether the rest of the file is what PCL leaves after the data: < 1 page of zeros."""
    tail = fh.read(PAD_BYTES + 1)
    return len(tail) <= PAD_BYTES and not tail.strip(b'\x00 \t\r\n')


def _read_binary(fh, header: PcdHeader, path, file_size: int) -> np.ndarray:
    need = header.points * header.point_size
    have = file_size - header.data_offset
    if have < need:
        raise CloudError(f'{_where(path)} has {have} bytes of point data, the header needs '
                         f'POINTS x point size = {header.points} x {header.point_size} = {need} '
                         '(file cut short, or POINTS/SIZE/COUNT wrong)')
    fh.seek(header.data_offset)
    raw = fh.read(need)
    if not _only_padding(fh):
        raise CloudError(f'{_where(path)} has {have - need} bytes after the {need} bytes of '
                         'point data: POINTS, SIZE or COUNT in the header are wrong')
    return np.frombuffer(raw, dtype=header.dtype()).copy()


def _read_compressed(fh, header: PcdHeader, path, file_size: int) -> np.ndarray:
    need = header.points * header.point_size
    have = file_size - header.data_offset
    if have < 8:
        raise CloudError(f'{_where(path)}: binary_compressed data has no size fields (file '
                         'cut short)')
    fh.seek(header.data_offset)
    compressed, uncompressed = struct.unpack('<II', fh.read(8))
    if uncompressed != need:
        raise CloudError(f'{_where(path)}: compressed block declares {uncompressed} bytes, '
                         f'the header needs POINTS x point size = {header.points} x '
                         f'{header.point_size} = {need}')
    if compressed > have - 8:
        raise CloudError(f'{_where(path)}: compressed block declares {compressed} bytes, the '
                         f'file holds {have - 8} after the header (cut short)')
    if need > LZF_MAX_RATIO * compressed + 32:
        raise CloudError(f'{_where(path)}: {compressed} compressed bytes cannot hold {need} '
                         'bytes of LZF data')
    raw = lzf_decompress(fh.read(compressed), need)
    if not _only_padding(fh):
        raise CloudError(f'{_where(path)} has {have - 8 - compressed} bytes after the '
                         'compressed block: its size field is wrong')
    # binary_compressed stores each field as one column (all points' values in a row)
    dtype = header.dtype()
    arr = np.empty(header.points, dtype=dtype)
    pos = 0
    for name in dtype.names:
        col = dtype.fields[name][0]
        nbytes = col.itemsize * header.points
        arr[name] = np.frombuffer(raw, dtype=col, count=header.points, offset=pos)
        pos += nbytes
    return arr


def _read_ascii(fh, header: PcdHeader, path, file_size: int) -> np.ndarray:
    values = sum(header.counts)
    have = file_size - header.data_offset
    if have < header.points * (2 * values) - 1:   # "0 0 0\n" is the shortest a point gets
        raise CloudError(f'{_where(path)} has {have} bytes of ascii data, too few for '
                         f'{header.points} points of {values} values (cut short, or POINTS '
                         'wrong)')
    # one plain column per value, so numpy checks every line has exactly `values` of them
    flat = []
    for name, size, kind, count in zip(header.fields, header.sizes, header.types,
                                       header.counts):
        for k in range(count):
            flat.append((f'{name}\x00{k}', '<' + _TYPES[(kind, size)]))
    fh.seek(header.data_offset)
    text = io.TextIOWrapper(fh, encoding='ascii', errors='strict', newline=None)
    try:
        with warnings.catch_warnings():   # blank lines are skipped, and not counted: fine
            warnings.filterwarnings('ignore', 'Input line', UserWarning)
            table = np.loadtxt(text, dtype=np.dtype(flat), max_rows=header.points + 1,
                               ndmin=1, comments=None)
    except UnicodeDecodeError:
        raise CloudError(f'{_where(path)}: ascii point data holds non-text bytes') from None
    except (ValueError, OverflowError) as exc:
        raise CloudError(f'{_where(path)}: bad ascii point data: {str(exc)[:200]}') from None
    finally:
        text.detach()
    if table.shape[0] != header.points:
        lines = (f'more than {header.points}' if table.shape[0] > header.points
                 else str(table.shape[0]))
        raise CloudError(f'{_where(path)} has {lines} lines of points, the header declares '
                         f'POINTS {header.points}')
    dtype = header.dtype()
    arr = np.empty(header.points, dtype=dtype)
    i = 0
    for name, count in zip(dtype.names, header.counts):
        if count == 1:
            arr[name] = table[flat[i][0]]
        else:
            for k in range(count):
                arr[name][:, k] = table[flat[i + k][0]]
        i += count
    return arr


def read_pcd_array(path: str | Path, *, max_points: int | None = None
                   ) -> tuple[np.ndarray, PcdHeader]:
    """(structured points, header) of a PCD file; CloudError for any malformed file."""
    path = Path(path)
    try:
        with open(path, 'rb') as fh:
            file_size = fh.seek(0, io.SEEK_END)
            fh.seek(0)
            header = parse_header(fh.read(MAX_HEADER_BYTES), path)
            _check_points(header, path, max_points)
            reader = {'ascii': _read_ascii, 'binary': _read_binary,
                      'binary_compressed': _read_compressed}[header.data]
            return reader(fh, header, path, file_size), header
    except OSError as exc:
        raise CloudError(f'cannot read PCD file {path}: {exc.strerror or exc}') from None


def encode_pcd(arr: np.ndarray, data: str = 'binary', *, width: int | None = None,
               height: int = 1) -> bytes:
    """A PCD file's bytes for a structured array (scalar fields of PCD types).

    For tests and benchmarks that need real files, valid or deliberately broken; the
    compressed kind stores its LZF block uncompressed (:func:`lzf_store`).
    """
    if data not in DATA_KINDS:
        raise ValueError(f'data must be one of {DATA_KINDS}, got {data!r}')
    names = list(arr.dtype.names)
    kinds = {'i': 'I', 'u': 'U', 'f': 'F'}
    sizes = [arr.dtype[n].itemsize for n in names]
    types = [kinds[arr.dtype[n].kind] for n in names]
    n = arr.shape[0]
    width = n // max(height, 1) if width is None else width
    head = (f'# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\n'
            f'FIELDS {" ".join(names)}\nSIZE {" ".join(map(str, sizes))}\n'
            f'TYPE {" ".join(types)}\nCOUNT {" ".join("1" for _ in names)}\n'
            f'WIDTH {width}\nHEIGHT {height}\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\n'
            f'DATA {data}\n').encode('ascii')
    packed = np.dtype({'names': names, 'formats': [arr.dtype[x].newbyteorder('<')
                                                   for x in names]})
    out = np.empty(n, dtype=packed)
    for name in names:
        out[name] = arr[name]
    if data == 'binary':
        return head + out.tobytes()
    if data == 'ascii':
        lines = [' '.join(repr(v.item()) if isinstance(v, np.floating) else str(v)
                          for v in row) for row in out]
        return head + ('\n'.join(lines) + '\n').encode('ascii')
    columns = b''.join(np.ascontiguousarray(out[name]).tobytes() for name in names)
    block = lzf_store(columns)
    return head + struct.pack('<II', len(block), len(columns)) + block
