"""Chunk codec: numeric arrays + JSON metadata <-> one bytes value, with no pickle anywhere.

Layout (all integers little-endian):
    b"KDCH" | u16 format version | u32 header length | UTF-8 JSON header | array payloads...
The header is {"meta": <caller's dict>, "arrays": [{"name", "dtype", "shape", "codec", "nbytes"}]}
where "nbytes" is the stored (compressed) length of that array's payload.

Arrays are written with zstd (level 3) and read back from zstd, lz4 (chunks written before zstd
was chosen) or "none" (data that does not compress). ``kd-system bench`` picked zstd by figures:
on 256-state Pong chunks it stores 109 bytes of frames per state against lz4's 399 (3.7x fewer)
and decodes 400k states/s against lz4's 22k (the learner's sampling decodes 4 chunks per batch,
so decoding was what bounded it); it encodes 89k states/s, ~1.5% of an Atari actor's time.
dtype x shape gives the exact raw size, so decoders get a bounded output size instead of
trusting a size stored in the stream.
"""

from __future__ import annotations

import json
import math
import struct
import threading

import lz4.block
import numpy as np
import zstandard

from kd_system.errors import CorruptChunkError, StoreError

MAGIC = b"KDCH"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<4sHI")  # magic, version, header length
MAX_HEADER_BYTES = 1 << 20
MAX_CHUNK_RAW_BYTES = 1 << 30  # 1 GiB: ~38k Atari states; anything larger is corrupt or hostile
_MAX_LZ4_RATIO = 256  # an lz4 block cannot expand more than ~255x, so larger claims are lies
_MAX_NDIM = 32

ALLOWED_DTYPES = frozenset(
    np.dtype(t).newbyteorder("<").str
    for t in (np.bool_, np.int8, np.int16, np.int32, np.int64,
              np.uint8, np.uint16, np.uint32, np.uint64, np.float16, np.float32, np.float64)
)
ZSTD_LEVEL = 3
CODECS = ("zstd", "lz4")  # what encode_chunk can write; decode_chunk also reads "none"
_local = threading.local()  # zstd (de)compressor objects are not safe to share between threads


def _zstd_compressor() -> zstandard.ZstdCompressor:
    if not hasattr(_local, "compressor"):
        _local.compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return _local.compressor


def _zstd_decompressor() -> zstandard.ZstdDecompressor:
    if not hasattr(_local, "decompressor"):
        _local.decompressor = zstandard.ZstdDecompressor()
    return _local.decompressor


def _compress(codec: str, raw: np.ndarray) -> bytes:
    if codec == "zstd":
        return _zstd_compressor().compress(raw)
    return lz4.block.compress(raw, store_size=False)


_FIX = "clear the run's namespace (ReplayTable.clear) or start a new run"


def _corrupt(why: str) -> CorruptChunkError:
    return CorruptChunkError(f"corrupt replay chunk: {why}; {_FIX}")


def _json_default(value):
    if isinstance(value, np.generic):  # numpy scalars in meta are common (rewards, ids)
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def encode_chunk(arrays: dict[str, np.ndarray], meta: dict, codec: str = "zstd") -> bytes:
    """Serialise named numeric arrays plus a JSON-serialisable meta dict into one blob."""
    if codec not in CODECS:
        raise StoreError(f"chunk codec {codec!r} is unknown; use one of {', '.join(CODECS)}")
    if not isinstance(meta, dict):
        raise StoreError(f"chunk meta must be a dict, got {type(meta).__name__}")
    specs, payloads, raw_total = [], [], 0
    for name, array in arrays.items():
        array = np.asarray(array)
        dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
        if dtype.str not in ALLOWED_DTYPES:
            raise StoreError(f"chunk array {name!r} has dtype {array.dtype}: only bool, "
                             "(u)int8-64 and float16/32/64 can be stored; convert it first")
        # A flat uint8 view, not tobytes(): copying a 7 MB Atari chunk costs more than lz4 does.
        raw = np.require(array, dtype=dtype, requirements="C").reshape(-1).view(np.uint8)
        raw_total += raw.nbytes
        packed = _compress(codec, raw)
        used = codec if len(packed) < raw.nbytes else "none"  # random floats barely compress
        payload = packed if used != "none" else raw
        specs.append({"name": str(name), "dtype": dtype.str, "shape": list(array.shape),
                      "codec": used, "nbytes": len(payload)})
        payloads.append(payload)
    if raw_total > MAX_CHUNK_RAW_BYTES:
        raise StoreError(f"chunk holds {raw_total} bytes, above the {MAX_CHUNK_RAW_BYTES}-byte "
                         "limit: lower store.chunk_states")
    try:
        header = json.dumps({"meta": meta, "arrays": specs}, default=_json_default,
                            separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise StoreError(f"chunk meta is not JSON-serialisable ({exc}): "
                         "pass only str/int/float/bool/list/dict values") from None
    if len(header) > MAX_HEADER_BYTES:
        raise StoreError(f"chunk header is {len(header)} bytes (limit {MAX_HEADER_BYTES}): "
                         "keep chunk meta small")
    return b"".join([_PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)), header, *payloads])


def _parse_spec(spec) -> tuple[str, np.dtype, tuple[int, ...], str, int, int]:
    if not isinstance(spec, dict):
        raise _corrupt("array entry is not an object")
    name, dtype_str, shape = spec.get("name"), spec.get("dtype"), spec.get("shape")
    codec, nbytes = spec.get("codec"), spec.get("nbytes")
    if (not isinstance(name, str) or not isinstance(dtype_str, str)
            or dtype_str not in ALLOWED_DTYPES or codec not in ("zstd", "lz4", "none")):
        raise _corrupt(f"bad name/dtype/codec in array entry {str(spec)[:80]}")
    if (not isinstance(shape, list) or len(shape) > _MAX_NDIM
            or not all(type(d) is int and d >= 0 for d in shape)
            or type(nbytes) is not int or nbytes < 0):
        raise _corrupt(f"bad shape or size for array {name!r}")
    dtype = np.dtype(dtype_str)
    raw_nbytes = math.prod(shape) * dtype.itemsize  # Python ints: no overflow on hostile shapes
    return name, dtype, tuple(shape), codec, nbytes, raw_nbytes


def decode_chunk(blob: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """Inverse of encode_chunk; raises CorruptChunkError on anything malformed, never pickles."""
    view = memoryview(blob)
    if len(view) < _PREFIX.size:
        raise _corrupt(f"only {len(view)} bytes, truncated")
    magic, version, header_len = _PREFIX.unpack_from(view)
    if magic != MAGIC:
        raise _corrupt("bad magic, not a kd_system chunk")
    if version != FORMAT_VERSION:
        raise _corrupt(f"format version {version}, this kd_system reads version {FORMAT_VERSION} "
                       "(written by an incompatible kd_system version)")
    if header_len > MAX_HEADER_BYTES or _PREFIX.size + header_len > len(view):
        raise _corrupt("header length exceeds the data, truncated")
    offset = _PREFIX.size + header_len
    try:
        header = json.loads(bytes(view[_PREFIX.size:offset]))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise _corrupt("header is not valid JSON") from None
    if (not isinstance(header, dict) or not isinstance(header.get("meta"), dict)
            or not isinstance(header.get("arrays"), list)):
        raise _corrupt("header lacks meta/arrays")
    specs = [_parse_spec(spec) for spec in header["arrays"]]
    if len({spec[0] for spec in specs}) != len(specs):
        raise _corrupt("duplicate array names")
    if sum(raw for *_, raw in specs) > MAX_CHUNK_RAW_BYTES:
        raise _corrupt("declared array sizes exceed the chunk size limit")
    if offset + sum(nbytes for _, _, _, _, nbytes, _ in specs) != len(view):
        raise _corrupt("payload length does not match the header, truncated or padded")
    arrays = {}
    for name, dtype, shape, codec, nbytes, raw_nbytes in specs:
        payload = view[offset:offset + nbytes]
        offset += nbytes
        arrays[name] = np.frombuffer(_unpack(name, codec, payload, raw_nbytes),
                                     dtype=dtype).reshape(shape)
    return header["meta"], arrays


def _unpack(name: str, codec: str, payload: memoryview, raw_nbytes: int) -> bytearray:
    if codec == "none":
        if len(payload) != raw_nbytes:
            raise _corrupt(f"array {name!r} holds {len(payload)} bytes, dtype x shape says "
                           f"{raw_nbytes}")
        return bytearray(payload)
    if codec == "zstd":  # the output is capped at the declared size, itself capped per chunk
        try:
            # The frame states its size and zstd allocates that much: check it before trusting it.
            if zstandard.frame_content_size(payload) != raw_nbytes:
                raise _corrupt(f"array {name!r} holds a zstd frame of another size than dtype x shape says")
            raw = _zstd_decompressor().decompress(payload, max_output_size=raw_nbytes)
        except (zstandard.ZstdError, MemoryError):
            raise _corrupt(f"array {name!r} does not decompress") from None
        if len(raw) != raw_nbytes:
            raise _corrupt(f"array {name!r} decompressed to {len(raw)} bytes, expected {raw_nbytes}")
        return bytearray(raw)
    if raw_nbytes > _MAX_LZ4_RATIO * len(payload) + 64:
        raise _corrupt(f"array {name!r} claims {raw_nbytes} bytes from {len(payload)} "
                       "compressed bytes, more than lz4 can produce")
    if raw_nbytes == 0:
        return bytearray()
    try:
        raw = lz4.block.decompress(payload, uncompressed_size=raw_nbytes, return_bytearray=True)
    except lz4.block.LZ4BlockError:
        raise _corrupt(f"array {name!r} does not decompress") from None
    if len(raw) != raw_nbytes:
        raise _corrupt(f"array {name!r} decompressed to {len(raw)} bytes, expected {raw_nbytes}")
    return raw
