"""Released Haiku checkpoints in and out, without jax or haiku, and without running code from the file.

What `load_haiku_checkpoint` accepts. A file's format is read from its first bytes, never from its name,
so `.pickle`, `.pystate`, `.pkl` or any other name works alike:

- **Pickle** (the released `.pickle` / `.pystate` files). Nested Haiku `FlatMapping`s (pickled as
  `haiku._src.data_structures.FlatMapping(dict)`) or plain dicts of numpy arrays. The payload is either
  bare params `{module_path: {leaf_name: array}}` (language, flow, video) or
  `{'params': ..., 'state': ...}` (the ImageNet files). Binary pickles only (protocol 3 to 5, what
  Python 3 writes); every released checkpoint is protocol 3.
- **npz** (`numpy.savez`, read with `allow_pickle=False`). Every key is
  `params/<module_path>/<leaf_name>` or `state/<module_path>/<leaf_name>`, where the leaf name is the
  part after the last `/`; `save_haiku_npz` writes this layout. A key without one of the two prefixes
  is an error rather than a guess, so a module can never be mistaken for the state.
- **A tree in memory**, e.g. the output of `hk.transform(f).init(...)`, in either of the two shapes
  above. Leaves may be jax arrays; they become numpy arrays through `np.asarray`.

Safety: the pickle is read by an unpickler whose `find_class` resolves only the globals in
`_ALLOWED_GLOBALS` (Haiku's `FlatMapping`, which becomes a plain `dict`, and numpy's array, dtype and
scalar reconstructors). Any other global raises `UnsafePickleError` before it is resolved, so nothing it
names can run. Even the allowed names resolve to stand-ins of ours, never to numpy's objects: called or
BUILT by a crafted file, `numpy.ndarray` and `numpy.dtype` themselves can be made to read pointers from
the file's bytes. The stand-ins admit plain numeric dtypes and exact byte counts only, then let numpy
build the array. The opcode scan refuses a memo index beyond the objects memoized so far, for which
CPython's unpickler would allocate a table of that size (a 9-byte file can ask for gigabytes).

Memory and time: a pickle is mapped into memory (copy-on-write), never copied. Its opcodes are scanned
first, and each large bytes payload (an array's data, 64 KiB or more) is handed to the unpickler as a
persistent id that stands for that span of the mapping, so the large arrays are views of the file's pages:
loading an 800 MB checkpoint takes its size in page cache and about nothing more, and no page is copied.
A file that does not map is read into one buffer instead. The file's sha256 is computed by a background
thread from the same pages while the pickle is parsed; `HaikuCheckpoint.sha256` waits for it. As with
any mapping, a file truncated by another process while its arrays are in use makes reading them fail
(SIGBUS). An npz file is read into memory whole before its arrays are extracted (about twice its size).

`save_haiku_pickle` writes the released format (protocol 3; globals `haiku._src.data_structures
FlatMapping`, `numpy.core.multiarray _reconstruct`, `numpy ndarray`, `numpy dtype`) opcode by opcode,
so it needs no haiku and numpy 2's renamed `numpy._core` never reaches the file; both real
`pickle.load` with haiku installed and `load_haiku_checkpoint` read it back.
"""

from __future__ import annotations

import hashlib
import io
import mmap
import os
import pickle
import pickletools
import struct
import threading
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Mapping

import numpy as np

from perceiver_io.atomic import atomic_output, special_file_kind
from perceiver_io.errors import CheckpointFormatError, ConversionError, InputTypeError, UnsafePickleError

try:
    from numpy._core import multiarray as _multiarray
except ImportError:  # numpy < 2
    from numpy.core import multiarray as _multiarray

Tree = dict[str, dict[str, np.ndarray]]


@dataclass(frozen=True, eq=False)
class HaikuCheckpoint:
    """A Haiku checkpoint as numpy: `{module_path: {leaf_name: array}}` for params and state.

    `state` is `{}` when the source has none (every released checkpoint but the ImageNet ones).
    `source` is the file path and `sha256` the hex digest of the file's bytes; both are None for a tree
    that was already in memory. `digest` is what computes the sha256 (anything with `hexdigest()`).
    `container` says whether the source held `{'params': ..., 'state': ...}` rather than bare params (an
    npz file always holds both parts), so that an export can give the user's layout back.
    """

    params: Tree = field(repr=False)
    state: Tree = field(repr=False)
    source: str | None
    digest: Any = field(default=None, repr=False)
    container: bool = False

    @property
    def sha256(self) -> str | None:
        """The file's sha256 in hex (None for an in-memory tree); waits for the background hash if need be."""
        return None if self.digest is None else self.digest.hexdigest()


class _StandIn:
    """What the allow-list hands the unpickler for a global: a function of ours, never the real object.

    Callable (REDUCE), but no class (so no NEWOBJ), and its `__setstate__` refuses BUILD, so a file
    cannot change it for this or any later load.
    """

    __slots__ = ("_function",)

    def __init__(self, function: Callable[..., Any]):
        self._function = function

    def __call__(self, *args: Any) -> Any:
        return self._function(*args)

    def __setstate__(self, state: Any) -> None:
        raise CheckpointFormatError("the pickle tries to modify one of its globals")


def _flat_mapping_as_dict(items: Any) -> dict:
    """Stands in for `haiku._src.data_structures.FlatMapping`, pickled as `FlatMapping(dict)`."""
    return dict(items)


def _ndarray_called(*args: Any) -> None:
    raise CheckpointFormatError("the pickle calls numpy.ndarray directly; numpy's pickles only pass it to "
                                "_reconstruct, and ndarray(shape, dtype, buffer) can read pointers from the file")


# Stands in for `numpy.ndarray`, which numpy's reduction passes to `_reconstruct` and never calls.
_NDARRAY = _StandIn(_ndarray_called)


class _PickledDtype:
    """Stands in for `numpy.dtype(spec, align, copy)` + BUILD `state`: plain numeric dtypes only.

    A real dtype is never exposed to the file's BUILD: its state can add (object) fields to any dtype.
    """

    __slots__ = ("dtype",)

    def __init__(self, spec: Any, align: Any = False, copy: Any = False):
        dtype = np.dtype(spec) if isinstance(spec, str) else None
        if dtype is None or dtype.kind not in "biufc" or dtype.fields is not None or dtype.subdtype is not None:
            raise CheckpointFormatError(f"the pickle holds the dtype {spec!r}; only numeric dtypes are allowed")
        self.dtype = dtype

    def __setstate__(self, state: Any) -> None:
        # numpy writes (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata]).
        if not (isinstance(state, tuple) and len(state) >= 5 and state[1] in ("<", ">", "|", "=")
                and state[2:5] == (None, None, None)):
            raise CheckpointFormatError(f"the pickle gives the numeric dtype {self.dtype} the state {state!r}")
        if state[1] in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(state[1])


class _PickledArray:
    """Stands in for `_reconstruct(ndarray, (0,), b'b')` + BUILD `(1, shape, dtype, is_fortran, bytes)`.

    The state is checked (numeric dtype, exact byte count) before numpy's own `__setstate__` sees it,
    which keeps small arrays in the bytes the unpickler read; a large array's data is a `_Payload`, and the
    array a view of it. `np.asarray` gives the array.
    """

    __slots__ = ("_array",)

    def __init__(self) -> None:
        self._array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1):
            raise CheckpointFormatError("the pickle gives an array a state that is not numpy's (1, shape, dtype, "
                                        "is_fortran, bytes)")
        _, shape, dtype, is_fortran, data = state
        dtype = _checked_dtype(dtype)
        shape = _checked_shape(shape)
        if not isinstance(is_fortran, bool) or not isinstance(data, (bytes, _Payload)):
            raise CheckpointFormatError(f"the pickle gives an array of shape {shape} no raw bytes (found "
                                        f"{type(data).__name__}); only numeric arrays are allowed")
        _check_byte_count(data, shape, dtype)
        if isinstance(data, _Payload):
            self._array = np.frombuffer(data.view, dtype).reshape(shape, order="F" if is_fortran else "C")
            return
        array = _multiarray._reconstruct(np.ndarray, (0,), b"b")
        array.__setstate__((1, shape, dtype, is_fortran, data))
        self._array = array

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        if self._array is None:
            raise CheckpointFormatError("the pickle creates an array but never fills it")
        return self._array


def _checked_dtype(dtype: Any) -> np.dtype:
    if not isinstance(dtype, _PickledDtype):
        raise CheckpointFormatError(f"the pickle gives an array the dtype {dtype!r}; expected a numpy dtype")
    return dtype.dtype


def _checked_shape(shape: Any) -> tuple[int, ...]:
    if not (isinstance(shape, tuple) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise CheckpointFormatError(f"the pickle gives an array the shape {shape!r}; expected a tuple of sizes")
    return shape


def _check_byte_count(data: bytes | bytearray | _Payload, shape: tuple[int, ...], dtype: np.dtype) -> None:
    expected = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if len(data) != expected:
        raise CheckpointFormatError(f"the pickle holds {len(data)} bytes for a {dtype} array of shape {shape}, "
                                    f"which needs {expected}")


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> _PickledArray:
    """Stands in for `numpy.core.multiarray._reconstruct`."""
    if subtype is not _NDARRAY:
        raise CheckpointFormatError(f"the pickle reconstructs an array of type {subtype!r}; expected numpy.ndarray")
    return _PickledArray()


def _scalar(dtype: Any, data: Any) -> np.ndarray:
    """Stands in for `numpy.core.multiarray.scalar` (a numpy scalar leaf, e.g. an `np.int32` counter).

    Gives a 0-d array, as the leaf would become anyway.
    """
    dtype = _checked_dtype(dtype)
    if not isinstance(data, bytes):
        raise CheckpointFormatError(f"the pickle gives a {dtype} scalar no raw bytes (found {type(data).__name__})")
    _check_byte_count(data, (), dtype)
    return np.frombuffer(data, dtype).reshape(()).copy()


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """Stands in for `numpy.core.numeric._frombuffer`, numpy's reduction under pickle protocol 5."""
    dtype, shape = _checked_dtype(dtype), _checked_shape(shape)
    if not isinstance(buffer, (bytes, bytearray, _Payload)) or order not in ("C", "F"):
        raise CheckpointFormatError(f"the pickle gives a {dtype} array of shape {shape} no raw bytes")
    _check_byte_count(buffer, shape, dtype)
    return np.frombuffer(buffer.view if isinstance(buffer, _Payload) else buffer, dtype).reshape(shape, order=order)


_NUMPY_PACKAGES = ("numpy.core", "numpy._core")  # numpy 1 writes the first, numpy 2 the second

_ALLOWED_GLOBALS = {
    ("haiku._src.data_structures", "FlatMapping"): _StandIn(_flat_mapping_as_dict),
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _StandIn(_PickledDtype),
    **{(f"{package}.multiarray", "_reconstruct"): _StandIn(_reconstruct) for package in _NUMPY_PACKAGES},
    **{(f"{package}.multiarray", "scalar"): _StandIn(_scalar) for package in _NUMPY_PACKAGES},
    **{(f"{package}.numeric", "_frombuffer"): _StandIn(_frombuffer) for package in _NUMPY_PACKAGES},
}

_EXPECTED_LAYOUT = "{module_path: {leaf_name: array}} or {'params': ..., 'state': ...}"

_BFLOAT16_ADVICE = ("bfloat16 checkpoints are not supported: cast the parameters to float32 in JAX first "
                    "(jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), params)) and save them again")

_FOREIGN_HEADERS = {
    b"\x1f\x8b": "it is gzip-compressed: decompress it first",
    b"version https://git-lfs": "it is a Git LFS pointer, not the file itself: run `git lfs pull`",
    b"\x93NUMPY": "it is a single .npy array, not a parameter tree: save the tree with save_haiku_npz",
    b"<": "it looks like HTML or XML, probably an error page saved by a failed download",
}


def load_haiku_checkpoint(source: str | os.PathLike | Mapping) -> HaikuCheckpoint:
    """Reads a Haiku checkpoint (pickle or npz file, or a tree in memory) into numpy `params` and `state`.

    Raises FileNotFoundError for a missing file, UnsafePickleError for a pickle that asks for a global
    outside the allow-list, and CheckpointFormatError (naming the file) for anything else that is not a
    two-level tree of numeric arrays: a directory or special file, empty, truncated or foreign files, a top
    level that is not a mapping, a module entry that is not a mapping, a leaf that is not a numeric array
    (bfloat16 included). Big-endian leaves become native.
    """
    if isinstance(source, Mapping):
        params, state, container = _split_params_and_state(source, "the in-memory Haiku tree")
        return HaikuCheckpoint(params=params, state=state, source=None, container=container)
    if not isinstance(source, (str, os.PathLike)):
        raise InputTypeError(f"expected a file path or a mapping of Haiku params, got a {type(source).__name__}")
    path = os.fspath(source)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no Haiku checkpoint at {path}: check the path, or download the released file first")
    kind = special_file_kind(path)
    if kind:
        raise CheckpointFormatError(f"{path} is {kind}, not a regular file: give the path of the checkpoint file")
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size == 0:
            raise CheckpointFormatError(
                f"{path} is empty (0 bytes): a download or save was interrupted; delete it and fetch it again"
            )
        head = file.peek(32)[:32]
        if head.startswith(b"PK"):
            data = file.read()
            digest = hashlib.sha256(data)
            params, state = _read_npz(data, path)
            container = True
        else:
            _check_pickle_header(head, path)
            data = _mapped(file, size)
            digest = _BufferDigest(data, path)
            try:
                tree = _unpickle(data, path)
                params, state, container = _split_params_and_state(tree, path)
            except BaseException:
                digest.cancel()
                raise
    return HaikuCheckpoint(params=params, state=state, source=path, digest=digest, container=container)


def save_haiku_pickle(
    path: str | os.PathLike, params: Mapping, state: Mapping | None = None, *, overwrite: bool = False
) -> None:
    """Writes `params` (and `state`, if given) as the released checkpoints are written.

    Bare params become one `FlatMapping` of `FlatMapping`s, like the language, flow and video files;
    with `state` (even `{}`) the file holds `{'params': ..., 'state': ...}`, like the ImageNet files.
    Leaves keep their dtype (float32 params, int32 BatchNorm `counter`). The file appears atomically;
    an existing one is kept (FileExistsError) unless `overwrite`.
    """
    what = "the tree passed to save_haiku_pickle"
    params_tree = _validated_tree(params, what, "params")
    state_tree = None if state is None else _validated_tree(state, what, "state", allow_empty=True)
    with atomic_output(path, overwrite) as out:
        _ReleasedPickleWriter(out).write(params_tree, state_tree)


def save_haiku_npz(
    path: str | os.PathLike, params: Mapping, state: Mapping | None = None, *, overwrite: bool = False
) -> None:
    """Writes `params` and `state` as an uncompressed npz with keys `params/<module>/<leaf>` and
    `state/<module>/<leaf>` (the layout `load_haiku_checkpoint` reads). Atomic; no overwrite unless asked."""
    what = "the tree passed to save_haiku_npz"
    trees = {"params": _validated_tree(params, what, "params")}
    trees["state"] = _validated_tree(state or {}, what, "state", allow_empty=True)
    arrays = {}
    for part, tree in trees.items():
        for module, leaves in tree.items():
            for name, array in leaves.items():
                if "/" in name:
                    raise CheckpointFormatError(f"{what}: leaf name {name!r} in {part} module {module!r} "
                                                "contains '/', which the npz keys use as separator")
                arrays[f"{part}/{module}/{name}"] = array
    with atomic_output(path, overwrite) as out:
        np.savez(out, **arrays)


class _Payload:
    """A large bytes payload of the pickle, left in the file's buffer: `view` is its span there."""

    __slots__ = ("view",)

    def __init__(self, view: memoryview):
        self.view = view

    def __len__(self) -> int:
        return len(self.view)


class _AllowListUnpickler(pickle.Unpickler):
    """An unpickler that resolves only `_ALLOWED_GLOBALS`; any other global is refused unresolved.

    It reads the scanned opcodes (`_scan_opcodes`), where persistent id k stands for the k-th large
    payload; the file's own persistent ids were refused by the scan."""

    def __init__(self, opcodes: bytes, payloads: list[_Payload], path: str):
        super().__init__(io.BytesIO(opcodes))
        self._payloads = payloads
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if name == "bfloat16":  # refused unresolved too, with the reason that matters here
            raise CheckpointFormatError(f"the pickle holds bfloat16 arrays (global {module}.{name}); "
                                        f"{_BFLOAT16_ADVICE}")
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self._path}: the pickle asks for the global {module}.{name} (module {module!r}, name {name!r}), "
                "which is not on the allow-list (numpy arrays and Haiku FlatMapping). Loading it could run "
                "code, so it was refused. Use only checkpoints from a trusted source; if you wrote this file, "
                "save its parameters with numpy leaves (np.asarray) or with save_haiku_pickle."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if type(pid) is not int or not 0 <= pid < len(self._payloads):  # only the scan writes persistent ids
            raise CheckpointFormatError(f"the pickle holds a persistent id ({pid!r}); Haiku checkpoints have none")
        return self._payloads[pid]


def _mapped(file: BinaryIO, size: int) -> mmap.mmap | bytearray:
    """The file's bytes: a copy-on-write mapping (arrays stay writable, the file unchanged), or, for a file
    that cannot be mapped, a buffer it is read into."""
    try:
        return mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
    except (OSError, ValueError):
        buffer = bytearray(size)
        file.readinto(buffer)
        return buffer


class _BufferDigest:
    """The sha256 of the file's bytes, computed by a background thread while the pickle is parsed (hashlib
    releases the GIL, so both cores work)."""

    CHUNK = 1 << 24

    def __init__(self, data: mmap.mmap | bytearray, path: str):
        self._data = memoryview(data)
        self._hexdigest: str | None = None
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sha256 of {path}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sha256 = hashlib.sha256()
        for start in range(0, len(self._data), self.CHUNK):
            if self._cancelled.is_set():
                return
            sha256.update(self._data[start : start + self.CHUNK])
        self._hexdigest = sha256.hexdigest()
        self._data = None

    def cancel(self) -> None:
        """Stops the thread (after its current chunk) and waits for it."""
        self._cancelled.set()
        self._thread.join()

    def hexdigest(self) -> str:
        self._thread.join()
        if self._hexdigest is None:
            raise RuntimeError("the sha256 was cancelled")
        return self._hexdigest


_OPCODES = {ord(op.code): op for op in pickletools.opcodes}
_LENGTH_PREFIXES = {  # argument kinds whose first bytes give the length of the rest: (bytes, signed)
    pickletools.TAKEN_FROM_ARGUMENT1: (1, False),
    pickletools.TAKEN_FROM_ARGUMENT4: (4, True),
    pickletools.TAKEN_FROM_ARGUMENT4U: (4, False),
    pickletools.TAKEN_FROM_ARGUMENT8U: (8, False),
}
_LARGE_PAYLOAD = 1 << 16


class _Truncated(Exception):
    """The file ends inside an opcode, or before STOP."""


def _scan_opcodes(data: mmap.mmap | bytearray, path: str) -> tuple[bytes, list[_Payload]]:
    """The pickle's opcodes up to STOP, with each BINBYTES/BINBYTES8 payload of 64 KiB or more replaced by
    `BININT k BINPERSID` (k-th payload), and without FRAME opcodes (their lengths would no longer hold).

    Only argument lengths and memo indices are read here; everything else is left to the unpickler. Refuses
    persistent ids (Haiku checkpoints have none), unknown opcodes, and a memo index beyond the objects
    memoized so far (the unpickler would allocate a memo table of that size)."""
    opcodes, payloads, view = bytearray(), [], memoryview(data)
    size, position, memoized = len(data), 0, 0
    while True:
        if position >= size:
            raise _Truncated(f"no STOP opcode before the end of the file ({size} bytes)")
        start, op = position, _OPCODES.get(data[position])
        if op is None:
            raise CheckpointFormatError(f"{path} is a corrupt pickle; delete it and fetch it again (unknown opcode "
                                        f"{bytes([data[position]])!r} at byte {position})")
        if op.name in ("PERSID", "BINPERSID"):
            raise CheckpointFormatError(f"{path}: the pickle holds a persistent id (opcode {op.name} at byte "
                                        f"{position}); Haiku checkpoints have none")
        position += 1
        argument = op.arg
        if argument is None:
            end = position
        elif argument.n >= 0:
            end = position + argument.n
        elif argument.n == pickletools.UP_TO_NEWLINE:
            end = position
            for _ in range(2 if argument.name == "stringnl_noescape_pair" else 1):
                end = data.find(b"\n", end) + 1
                if end == 0:
                    raise _Truncated(f"{op.name} at byte {start} has no end of line")
        else:
            width, signed = _LENGTH_PREFIXES[argument.n]
            if position + width > size:
                raise _Truncated(f"{op.name} at byte {start} is cut off")
            length = int.from_bytes(data[position : position + width], "little", signed=signed)
            if length < 0:
                raise CheckpointFormatError(f"{path} is a corrupt pickle; delete it and fetch it again "
                                            f"({op.name} at byte {start} has the length {length})")
            position += width
            end = position + length
            if op.name in ("BINBYTES", "BINBYTES8") and length >= _LARGE_PAYLOAD and end <= size:
                opcodes += pickle.BININT + struct.pack("<i", len(payloads)) + pickle.BINPERSID
                payloads.append(_Payload(view[position:end]))
                position = end
                continue
        if end > size:
            raise _Truncated(f"{op.name} at byte {start} needs {end - size} bytes more than the file has")
        if op.name == "MEMOIZE":
            memoized += 1
        elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            index = _memo_index(op, data[position:end], path, start)
            if index > memoized:
                raise CheckpointFormatError(f"{path} is a corrupt pickle; delete it and fetch it again ({op.name} at "
                                            f"byte {start} stores memo entry {index:,}, but only {memoized} objects "
                                            "are memoized before it)")
            memoized = max(memoized, index + 1)
        if op.name != "FRAME":
            opcodes += data[start:end]
        position = end
        if op.name == "STOP":
            return bytes(opcodes), payloads


def _memo_index(op: pickletools.OpcodeInfo, argument: bytes, path: str, start: int) -> int:
    try:
        return op.arg.reader(io.BytesIO(argument))
    except ValueError as error:
        raise CheckpointFormatError(f"{path} is a corrupt pickle; delete it and fetch it again ({op.name} at byte "
                                    f"{start}: {error})") from None


def _check_pickle_header(head: bytes, path: str) -> None:
    if head[:1] == b"\x80" and head[1:2] in (b"\x03", b"\x04", b"\x05"):
        return
    hint = next((why for prefix, why in _FOREIGN_HEADERS.items() if head.lstrip().startswith(prefix)), None)
    raise CheckpointFormatError(
        f"{path} is not a Haiku checkpoint: it starts with {head[:8]!r}, neither a binary pickle "
        f"(protocol 3-5, b'\\x80\\x03'...) nor an npz archive (b'PK'); "
        f"{hint or 'check that the path names the downloaded checkpoint'}"
    )


def _unpickle(data: mmap.mmap | bytearray, path: str) -> Any:
    try:
        opcodes, payloads = _scan_opcodes(data, path)
    except _Truncated as error:
        raise CheckpointFormatError(f"{path} ends before the pickle does: it is truncated (an interrupted download "
                                    f"or save) or not a pickle; delete it and fetch it again ({error})") from None
    try:
        return _AllowListUnpickler(opcodes, payloads, path).load()
    except (UnsafePickleError, OSError):
        raise
    except MemoryError as error:
        raise MemoryError(f"out of memory while unpickling {path} ({len(data):,} bytes): the machine lacks the "
                          "memory for it") from error
    except CheckpointFormatError as error:  # from the stand-ins, which do not know the path
        raise CheckpointFormatError(f"{path}: {error}") from None
    except Exception as error:
        if isinstance(error, EOFError) or "truncated" in str(error):
            problem = ("ends before the pickle does: it is truncated (an interrupted download or save) "
                       "or not a pickle; delete it and fetch it again")
        else:
            problem = "is a corrupt pickle; delete it and fetch it again"
        raise CheckpointFormatError(f"{path} {problem} ({type(error).__name__}: {error})") from error


def _read_npz(data: bytes, path: str) -> tuple[Tree, Tree]:
    trees: dict[str, dict[str, dict[str, Any]]] = {"params": {}, "state": {}}
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            for key in archive.files:
                part, _, module_and_leaf = key.partition("/")
                module, _, leaf = module_and_leaf.rpartition("/")
                if part not in trees or not module or not leaf:
                    raise CheckpointFormatError(
                        f"{path}: npz key {key!r} is not 'params/<module_path>/<leaf_name>' or "
                        "'state/<module_path>/<leaf_name>'; save the tree with save_haiku_npz"
                    )
                trees[part].setdefault(module, {})[leaf] = archive[key]
    except (CheckpointFormatError, OSError, MemoryError):
        raise
    except Exception as error:
        raise CheckpointFormatError(
            f"{path} is not a readable npz archive of numeric arrays ({type(error).__name__}: {error}); "
            "it is truncated, corrupt or holds object arrays; fetch or save it again"
        ) from error
    return (_validated_tree(trees["params"], path, "params"),
            _validated_tree(trees["state"], path, "state", allow_empty=True))


def _split_params_and_state(tree: Any, where: str) -> tuple[Tree, Tree, bool]:
    """Bare params, or the `{'params': ..., 'state': ...}` container, as validated (params, state, whether
    it was the container)."""
    if not isinstance(tree, Mapping):
        raise CheckpointFormatError(
            f"{where}: the top level is {_described(tree)}, expected a mapping {_EXPECTED_LAYOUT}"
        )
    if "params" not in tree and "state" not in tree:
        return _validated_tree(tree, where, "params"), {}, False
    if set(tree) - {"params", "state"} or "params" not in tree:
        raise CheckpointFormatError(
            f"{where}: a {{'params': ..., 'state': ...}} container must hold 'params' and may hold 'state', "
            f"nothing else; found keys {sorted(tree, key=str)}. Pass bare params or exactly that container"
        )
    return (_validated_tree(tree["params"], where, "params"),
            _validated_tree(tree.get("state", {}), where, "state", allow_empty=True), True)


def _validated_tree(tree: Any, where: str, part: str, allow_empty: bool = False) -> Tree:
    """`tree` as `{module_path: {leaf_name: ndarray}}` with numeric leaves, without copying arrays."""
    if not isinstance(tree, Mapping):
        raise CheckpointFormatError(
            f"{where}: {part} is {_described(tree)}, expected a mapping {{module_path: {{leaf_name: array}}}}"
        )
    if not tree and not allow_empty:
        raise CheckpointFormatError(f"{where}: {part} holds no modules; expected {_EXPECTED_LAYOUT}")
    validated: Tree = {}
    for module, leaves in tree.items():
        if not isinstance(module, str) or not module:
            raise CheckpointFormatError(
                f"{where}: {part} has the module key {module!r}; module paths are non-empty str"
            )
        if not isinstance(leaves, Mapping):
            raise CheckpointFormatError(
                f"{where}: {part} module {module!r} is {_described(leaves)}, expected a mapping "
                "{leaf_name: array}; a Haiku tree has exactly two levels"
            )
        validated[module] = {}
        for name, leaf in leaves.items():
            if not isinstance(name, str) or not name:
                raise CheckpointFormatError(f"{where}: {part} module {module!r} has the leaf key {name!r}; "
                                            "leaf names are non-empty str")
            validated[module][name] = _validated_leaf(leaf, f"{where}: {part} leaf {module}/{name}")
    return validated


def _validated_leaf(leaf: Any, where: str) -> np.ndarray:
    if not hasattr(leaf, "__array__"):
        raise CheckpointFormatError(f"{where} is {_described(leaf)}, expected a numeric array")
    try:
        array = np.asarray(leaf)
    except Exception as error:
        raise CheckpointFormatError(f"{where} cannot be read as an array: {error}") from error
    if array.dtype.kind == "V" and array.dtype.itemsize == 2 and array.dtype.names is None:
        raise CheckpointFormatError(f"{where} has dtype {array.dtype} (bfloat16, or the 2 raw bytes numpy saves "
                                    f"it as); {_BFLOAT16_ADVICE}")
    if array.dtype.kind not in "biufc":
        raise CheckpointFormatError(f"{where} has dtype {array.dtype}, expected a numeric (bool, int, float) array")
    return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))


def _described(value: Any) -> str:
    return "an array" if hasattr(value, "__array__") else f"a {type(value).__name__}"


class _ReleasedPickleWriter:
    """Writes a validated tree as a protocol-3 pickle of `FlatMapping`s of numpy arrays, opcode by opcode.

    Each array is `_reconstruct(ndarray, (0,), b'b')` + BUILD `(1, shape, dtype, False, C-order bytes)`,
    and each dtype `dtype(*args)` + BUILD `state`, exactly as numpy reduces them. The four globals are
    memoized on first use; nothing else is, as no object is shared.
    """

    _FLAT_MAPPING = ("haiku._src.data_structures", "FlatMapping")
    _RECONSTRUCT = ("numpy.core.multiarray", "_reconstruct")
    _NDARRAY = ("numpy", "ndarray")
    _DTYPE = ("numpy", "dtype")

    def __init__(self, out: BinaryIO):
        self._write = out.write
        self._memo: dict[tuple[str, str], int] = {}

    def write(self, params: Tree, state: Tree | None) -> None:
        self._write(pickle.PROTO + b"\x03")
        if state is None:
            self._flat_mapping(params)
        else:
            self._write(pickle.EMPTY_DICT + pickle.MARK)
            self._str("params")
            self._flat_mapping(params)
            self._str("state")
            self._flat_mapping(state)
            self._write(pickle.SETITEMS)
        self._write(pickle.STOP)

    def _global(self, module_and_name: tuple[str, str]) -> None:
        if module_and_name in self._memo:
            self._write(pickle.BINGET + bytes([self._memo[module_and_name]]))
            return
        self._memo[module_and_name] = len(self._memo)
        module, name = module_and_name
        self._write(pickle.GLOBAL + f"{module}\n{name}\n".encode("ascii"))
        self._write(pickle.BINPUT + bytes([self._memo[module_and_name]]))

    def _flat_mapping(self, mapping: Mapping[str, Any]) -> None:
        self._global(self._FLAT_MAPPING)
        self._write(pickle.EMPTY_DICT)
        if mapping:
            self._write(pickle.MARK)
            for key, value in mapping.items():
                self._str(key)
                if isinstance(value, np.ndarray):
                    self._array(value)
                else:
                    self._flat_mapping(value)
            self._write(pickle.SETITEMS)
        self._write(pickle.TUPLE1 + pickle.REDUCE)

    def _array(self, array: np.ndarray) -> None:
        array = np.asarray(array, order="C")
        self._global(self._RECONSTRUCT)
        self._global(self._NDARRAY)
        self._value((0,))
        self._value(b"b")
        self._write(pickle.TUPLE3 + pickle.REDUCE + pickle.MARK)
        self._value(1)
        self._value(tuple(int(d) for d in array.shape))
        _, dtype_args, dtype_state = array.dtype.__reduce__()  # (numpy.dtype, args, state)
        self._global(self._DTYPE)
        self._value(dtype_args)
        self._write(pickle.REDUCE)
        self._value(dtype_state)
        self._write(pickle.BUILD)
        self._value(False)
        self._bytes(array.reshape(-1).view(np.uint8))
        self._write(pickle.TUPLE + pickle.BUILD)

    def _value(self, value: Any) -> None:
        """None, bool, int, str, bytes and tuples of them: what shapes and dtype reductions hold."""
        if value is None:
            self._write(pickle.NONE)
        elif isinstance(value, bool):
            self._write(pickle.NEWTRUE if value else pickle.NEWFALSE)
        elif isinstance(value, int):
            if 0 <= value < 1 << 8:
                self._write(pickle.BININT1 + struct.pack("<B", value))
            elif 0 <= value < 1 << 16:
                self._write(pickle.BININT2 + struct.pack("<H", value))
            else:
                self._write(pickle.BININT + struct.pack("<i", value))
        elif isinstance(value, str):
            self._str(value)
        elif isinstance(value, bytes):
            self._bytes(value)
        elif isinstance(value, tuple):
            closing = {0: pickle.EMPTY_TUPLE, 1: pickle.TUPLE1, 2: pickle.TUPLE2, 3: pickle.TUPLE3}
            if len(value) not in closing:
                self._write(pickle.MARK)
            for item in value:
                self._value(item)
            self._write(closing.get(len(value), pickle.TUPLE))
        else:
            raise ConversionError(f"cannot write {type(value).__name__} {value!r} into a released-format pickle")

    def _str(self, text: str) -> None:
        encoded = text.encode("utf-8", "surrogatepass")
        self._write(pickle.BINUNICODE + struct.pack("<I", len(encoded)) + encoded)

    def _bytes(self, data: bytes | np.ndarray) -> None:
        size = len(data)
        if size < 1 << 8:
            self._write(pickle.SHORT_BINBYTES + struct.pack("<B", size))
        elif size < 1 << 32:
            self._write(pickle.BINBYTES + struct.pack("<I", size))
        else:
            raise ConversionError(f"a leaf of {size} bytes does not fit a protocol-3 pickle (at most 4 GiB per array)")
        self._write(data)
