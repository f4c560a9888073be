"""Vectorised PostgreSQL binary COPY encoding of NumPy columns.

``COPY ... FROM STDIN (FORMAT BINARY)`` takes rows as ``int16 nfields`` followed,
per field, by an ``int32`` byte length (``-1`` for NULL) and the value in network
byte order. :func:`encode_rows` builds that stream for whole NumPy columns at
once: rows are laid out in a padded structured array and, when a text column or
a NULL makes rows unequal in length, the padding is dropped with one boolean
mask. That is tens of times faster than formatting row by row in Python and is
what ``desilab ingest`` and the benchmarks send to the server.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import as_strided

__all__ = ["PG_TYPES", "CopyColumn", "encode_rows", "iter_encoded", "COPY_HEADER", "COPY_TRAILER"]

COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
COPY_TRAILER = struct.pack(">h", -1)

#: PostgreSQL type name -> big-endian NumPy scalar type of its binary form.
PG_TYPES = {
    "smallint": ">i2",
    "integer": ">i4",
    "bigint": ">i8",
    "real": ">f4",
    "double precision": ">f8",
    "boolean": "u1",
    "text": None,
    "real[]": ">f4",
    "double precision[]": ">f8",
}
_ELEMENT_OID = {"real[]": 700, "double precision[]": 701}


@dataclass
class CopyColumn:
    """One column to encode.

    Attributes
    ----------
    values : ndarray
        One entry per row (2-D for array types: one fixed-length array per row).
        Masked arrays give NULL where masked.
    pgtype : str
        A key of :data:`PG_TYPES`.
    """

    values: np.ndarray
    pgtype: str


def _as_text_bytes(values: np.ndarray) -> np.ndarray:
    """Fixed-width ASCII/UTF-8 bytes (``S`` dtype) with trailing blanks removed."""
    arr = np.ma.getdata(values)
    if arr.dtype.kind == "U":
        arr = np.char.encode(arr, "utf-8")
    elif arr.dtype.kind != "S":
        arr = np.asarray(arr).astype(str).astype("S")
    # FITS pads strings with blanks; NumPy drops trailing NULs on its own.
    return np.char.rstrip(arr, b" ")


@dataclass
class _Field:
    """A column prepared for encoding: payload dtype, per-row lengths (-1 = NULL)."""

    payload: list  # dtype entries after the length word
    size: int  # payload bytes when not NULL (text: the padded width)
    values: dict  # payload entry -> values
    lengths: np.ndarray | None  # None: never NULL and fixed width
    text: bool = False


def _prepare(col: CopyColumn, n: int) -> _Field:
    mask = np.ma.getmaskarray(col.values) if np.ma.isMaskedArray(col.values) else None
    if mask is not None and mask.ndim > 1:
        mask = mask.any(axis=tuple(range(1, mask.ndim)))
    if col.pgtype == "text":
        data = _as_text_bytes(col.values)
        lengths = np.strings.str_len(data).astype(np.int32) if n else np.zeros(0, np.int32)
        if mask is not None:
            lengths[mask] = -1
        return _Field([("data", data.dtype)], data.dtype.itemsize, {"data": data}, lengths, True)
    if col.pgtype not in PG_TYPES:
        raise ValueError(f"cannot COPY type {col.pgtype!r}; use one of {sorted(PG_TYPES)}")
    scalar = np.dtype(PG_TYPES[col.pgtype])
    data = np.ma.getdata(col.values)
    if col.pgtype.endswith("[]"):
        data = np.asarray(data).reshape(n, -1)
        m = data.shape[1]
        head = np.zeros(1, dtype=[(k, ">i4") for k in ("nd", "hasnull", "oid", "dim", "lb")])
        head[0] = (1, 0, _ELEMENT_OID[col.pgtype], m, 1)
        payload = [("ahead", "V20"), ("elems", [("elen", ">i4"), ("ev", scalar)], (m,))]
        values = {"ahead": head.view("V20")[0], "elems.elen": scalar.itemsize, "elems.ev": data}
        size = 20 + m * (4 + scalar.itemsize)
    else:
        if col.pgtype == "boolean":
            data = np.asarray(data).astype(bool).astype(np.uint8)
        payload, values, size = [("data", scalar)], {"data": data}, scalar.itemsize
    lengths = None
    if mask is not None and mask.any():
        lengths = np.where(mask, -1, size).astype(np.int32)
    return _Field(payload, size, values, lengths)


def _fill(rows: np.ndarray, name: str, values: dict, rows_of: slice | np.ndarray) -> None:
    """Write the payload of field ``name`` for the input rows ``rows_of``."""
    for key, value in values.items():
        target = rows[name]
        for part in key.split("."):
            target = target[part]
        if isinstance(value, np.ndarray) and value.ndim and value.shape[0]:
            value = value[rows_of]
        target[...] = value


#: Output bytes filled per pass over the fields: field-by-field copies of strided data
#: stay in the CPU caches instead of streaming every column through memory.
_BLOCK_BYTES = 1 << 20


def _encode_group(
    fields: list[_Field], index: np.ndarray | None, n: int, key: tuple, nf: int | None = None
) -> np.ndarray:
    """Rows whose variable fields all have the lengths ``key``: one fixed layout.

    ``nf``: the field count to start each row with (None: no count, a row's tail).
    """
    entries: list = [("nf", ">i2")] if nf is not None else []
    k = 0
    for i, f in enumerate(fields):
        sub: list = [("len", ">i4")]
        if f.lengths is None:
            sub += f.payload
        else:
            length = key[k]
            k += 1
            if length > 0:
                sub += [("data", f"S{length}")] if f.text else f.payload
        entries.append((f"f{i}", sub))
    out = np.empty(n, dtype=entries)  # every byte is a length or a payload: all written
    step = max(1, _BLOCK_BYTES // max(1, out.dtype.itemsize))
    for start in range(0, n, step):
        rows = out[start : start + step]
        rows_of = slice(start, start + step) if index is None else index[start : start + step]
        if nf is not None:
            rows["nf"] = nf
        k = 0
        for i, f in enumerate(fields):
            name = f"f{i}"
            if f.lengths is None:
                rows[name]["len"] = f.size
                _fill(rows, name, f.values, rows_of)
                continue
            length = key[k]
            k += 1
            rows[name]["len"] = length
            if length > 0:
                _fill(rows, name, f.values, rows_of)
    return out


def encode_rows(columns: Sequence[CopyColumn], *, header: bool = False) -> memoryview:
    """Encode rows in PostgreSQL's binary COPY format.

    Parameters
    ----------
    columns : sequence of CopyColumn
        The fields of each row, in the order of the COPY column list; all of
        the same length.
    header : bool
        Prepend the binary COPY signature and header (once per COPY).

    Returns
    -------
    memoryview
        Bytes of the rows, without the trailer (append :data:`COPY_TRAILER` at the
        end of a COPY); pass it straight to ``psycopg.Copy.write``.

    Notes
    -----
    The fixed-width fields before the first variable one (text, NULLs) are laid
    out for all rows at once; the rest of each row is built per group of rows
    whose variable fields have the same lengths, and both are copied into the
    rows' places in the output: the cost is per field, not per byte. Put the
    text columns last in the COPY column list for speed.
    """
    n = len(columns[0].values) if columns else 0
    if any(len(c.values) != n for c in columns):
        raise ValueError("all COPY columns must have the same number of rows")
    prefix = COPY_HEADER if header else b""
    fields = [_prepare(c, n) for c in columns]
    if n == 0:
        return memoryview(prefix)
    split = next((i for i, f in enumerate(fields) if f.lengths is not None), len(fields))
    head = _encode_group(fields[:split], None, n, (), nf=len(fields))
    if split == len(fields):
        return _with_prefix(prefix, head)
    tail = fields[split:]
    lengths = np.stack(
        [f.lengths if f.lengths is not None else np.full(n, f.size, np.int32) for f in tail],
        axis=1,
    ).astype(np.int64)
    # One integer per row for its tuple of lengths (mixed radix), so grouping is a 1-D sort.
    radix = np.maximum(lengths.max(axis=0) + 2, 1)
    code = np.zeros(n, dtype=np.int64)
    for j in range(lengths.shape[1]):
        code = code * radix[j] + (lengths[:, j] + 1)
    _, first, inverse = np.unique(code, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    keys = [tuple(int(x) for x, f in zip(k, tail, strict=True) if f.lengths is not None)
            for k in lengths[first]]  # fmt: skip
    width0 = head.dtype.itemsize
    row_len = width0 + 4 * len(tail) + np.maximum(lengths, 0).sum(axis=1)
    start = np.zeros(n, dtype=np.int64)
    np.cumsum(row_len[:-1], out=start[1:])
    out = np.empty(len(prefix) + int(row_len.sum()), dtype=np.uint8)
    out[: len(prefix)] = np.frombuffer(prefix, dtype=np.uint8)
    body = out[len(prefix) :]
    _place(body, start, head)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(keys) + 1))
    for g, key in enumerate(keys):
        index = order[bounds[g] : bounds[g + 1]]
        rows = _encode_group(tail, None if len(keys) == 1 else index, len(index), key)
        _place(body, start[index] + width0, rows)
    return memoryview(out)


def _place(body: np.ndarray, starts: np.ndarray, rows: np.ndarray) -> None:
    """Copy each record of ``rows`` to ``body[starts[i]:]``."""
    width = rows.dtype.itemsize
    if width == 0 or len(rows) == 0:
        return
    # Overlapping windows: row j of the view is body[j : j + width]; assigning whole rows
    # by index copies ``width`` contiguous bytes per record (numpy's fast path).
    windows = as_strided(body, shape=(len(body) - width + 1, width), strides=(1, 1))
    windows[starts] = rows.view(np.uint8).reshape(len(rows), width)


def _with_prefix(prefix: bytes, rows: np.ndarray) -> memoryview:
    if not prefix:
        return memoryview(rows.view(np.uint8))
    out = np.empty(len(prefix) + rows.nbytes, dtype=np.uint8)
    out[: len(prefix)] = np.frombuffer(prefix, dtype=np.uint8)
    out[len(prefix) :] = rows.view(np.uint8)
    return memoryview(out)


def iter_encoded(
    columns: Sequence[CopyColumn], *, chunk_rows: int = 200_000, header: bool = True
) -> Iterator[memoryview]:
    """Encode in chunks of ``chunk_rows`` rows (bounded memory); the first has the header.

    Yields
    ------
    memoryview
        One chunk of rows each; the trailer is not included.
    """
    n = len(columns[0].values) if columns else 0
    for start in range(0, max(n, 1), chunk_rows):
        part = [CopyColumn(c.values[start : start + chunk_rows], c.pgtype) for c in columns]
        yield encode_rows(part, header=header and start == 0)
