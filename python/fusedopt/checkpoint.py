"""Checkpoints: an optimizer's state (and its schedulers') in one ``.npz`` file.

    >>> fusedopt.save("run.npz", opt, schedulers=[scheduler], extra={"epoch": 3})
    >>> extra = fusedopt.load("run.npz", opt, schedulers=[scheduler])

The file is an ordinary ``.npz`` that ``np.load(path, allow_pickle=False)``
reads in full. Every array is an entry of its own, named after where it sits
(``optimizer/state/3/exp_avg``); everything else (hyperparameters, step
counts, scheduler states, ``extra``, the optimizer's class and rule, a format
version) is one JSON document in the 0-d string entry ``fusedopt_checkpoint``.
Values come back exactly as saved: floats bit for bit (NaN and infinities
included), tuples as tuples, dicts with non-string keys as such, NumPy scalars
and arrays with their dtypes.

``save`` never leaves a partial file at ``path``: it writes a temporary file
beside it, flushes and fsyncs it, gives it the mode of the file it replaces,
renames it over ``path`` (atomic), then fsyncs the directory. A process killed
in the middle leaves the previous checkpoint as it was, and at worst a stray
``.<name>.<pid>.<random>.tmp`` beside it, which nothing reads and which can be
deleted.

``load`` reads and checks the whole file before it changes anything: a
missing file raises FileNotFoundError; a truncated, corrupt or foreign file,
or one saved from another optimizer class, other shapes or other dtypes,
raises a ValueError naming the file, and the optimizer and the schedulers are
left as they were.

The params themselves are not saved (as in torch, the optimizer's state
holds none): keep them with your model, or pass them in ``extra``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import stat
import zipfile
from typing import IO, TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from .precision import bfloat16_dtype, is_bfloat16

if TYPE_CHECKING:
    from .optimizer import Optimizer

__all__ = ["save", "load", "FORMAT_VERSION", "MAX_NESTING"]

FORMAT_VERSION = 1
_FORMAT = "fusedopt checkpoint"
_DOCUMENT = "fusedopt_checkpoint"  # the npz entry holding the JSON document
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first entry, or an empty zip
# Levels of lists, tuples and dicts a saved value may nest (a tuple or a dict
# with non-string keys counts one level, as saved): deeper would exhaust
# Python's recursion limit in the (recursive) encoder and decoder.
MAX_NESTING = 100

# ---------------------------------------------------------------------- API
def save(
    path: str | os.PathLike,
    optimizer: Optimizer,
    *,
    schedulers: Sequence[Any] = (),
    extra: Any = None,
) -> None:
    """Write ``optimizer.state_dict()``, each scheduler's ``state_dict()`` and
    ``extra`` to ``path``, atomically (see the module docstring).

    ``path`` is used exactly as given (no ``.npz`` is appended). ``extra`` may
    hold anything made of None, bools, ints, floats, strings, lists, tuples,
    dicts, NumPy scalars and NumPy arrays (not of object dtype); ``load``
    returns it. A TypeError is raised, before anything is written, for any
    other value.
    """
    path = os.fspath(path)
    schedulers = _checked_schedulers(schedulers, optimizer)
    encoder = _Encoder()
    document = {
        "format": _FORMAT,
        "version": FORMAT_VERSION,
        "optimizer_class": type(optimizer).__name__,
        "rule": optimizer.rule.name,
        "optimizer": encoder.encode(optimizer.state_dict(), "optimizer"),
        "schedulers": [
            {"class": type(scheduler).__name__,
             "state": encoder.encode(scheduler.state_dict(), f"schedulers/{i}")}
            for i, scheduler in enumerate(schedulers)
        ],
        "extra": encoder.encode(extra, "extra"),
    }
    # json writes floats with repr (exact round trip) and NaN/Infinity as
    # JavaScript literals, which json.loads reads back.
    entries = {_DOCUMENT: np.array(json.dumps(document, allow_nan=True)), **encoder.arrays}
    _write_atomically(path, lambda file: _write_npz(file, entries))


def load(
    path: str | os.PathLike,
    optimizer: Optimizer,
    *,
    schedulers: Sequence[Any] = (),
) -> Any:
    """Restore ``optimizer`` (and ``schedulers``, in the order given to
    ``save``) from the checkpoint at ``path``; return the saved ``extra``.

    The optimizer must be built over params of the same number, groups,
    shapes and dtypes as the one saved, and be of the same class. Nothing
    changes unless everything fits: FileNotFoundError for a missing file,
    ValueError naming the file for anything else wrong with it.
    """
    path = os.fspath(path)
    schedulers = _checked_schedulers(schedulers, optimizer)
    document, arrays = _read_npz(path)
    try:
        decoder = _Decoder(arrays)
        _check_format(document)
        optimizer_state = decoder.decode(document["optimizer"])
        scheduler_states = [decoder.decode(entry["state"]) for entry in document["schedulers"]]
        extra = decoder.decode(document["extra"])
        decoder.check_all_used()
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(f"{path}: not a valid fusedopt checkpoint: {_message(error)}") from error
    try:
        _check_origin(document, optimizer, schedulers)
    except ValueError as error:
        raise ValueError(f"{path}: the checkpoint does not fit: {error}") from error
    _apply(path, optimizer, optimizer_state, schedulers, scheduler_states)
    return extra


# ----------------------------------------------------------------- checking
def _checked_schedulers(schedulers: Sequence[Any], optimizer: Optimizer) -> list:
    if isinstance(schedulers, (str, bytes)) or not isinstance(schedulers, Sequence):
        raise TypeError(f"schedulers must be a list or tuple, got {type(schedulers).__name__}")
    for i, scheduler in enumerate(schedulers):
        if not (callable(getattr(scheduler, "state_dict", None))
                and callable(getattr(scheduler, "load_state_dict", None))):
            raise TypeError(f"schedulers[{i}] has no state_dict()/load_state_dict(): {scheduler!r}")
        driven = getattr(scheduler, "optimizer", optimizer)
        if driven is not optimizer:
            raise ValueError(f"schedulers[{i}] drives another optimizer")
    return list(schedulers)


def _check_format(document: Any) -> None:
    """The document's own fields: format, version, every section present."""
    if not isinstance(document, dict) or document.get("format") != _FORMAT:
        raise ValueError(f"its {_DOCUMENT!r} entry is not a fusedopt checkpoint document")
    version = document.get("version")
    if version != FORMAT_VERSION:
        raise ValueError(f"format version {version!r}; this fusedopt reads version {FORMAT_VERSION}")
    missing = {"optimizer_class", "rule", "optimizer", "schedulers", "extra"} - document.keys()
    if missing:
        raise ValueError(f"the document has no {sorted(missing)}")
    entries = document["schedulers"]
    if not isinstance(entries, list) or not all(isinstance(e, dict) and e.keys() == {"class", "state"}
                                                for e in entries):
        raise ValueError("its 'schedulers' is not a list of {'class', 'state'} dicts")


def _check_origin(document: dict, optimizer: Optimizer, schedulers: list) -> None:
    """Saved from an optimizer of this class, with schedulers of these classes?"""
    saved_class, saved_rule = document["optimizer_class"], document["rule"]
    if (saved_class, saved_rule) != (type(optimizer).__name__, optimizer.rule.name):
        raise ValueError(
            f"it was saved from {saved_class} (rule {saved_rule!r}), this optimizer is "
            f"{type(optimizer).__name__} (rule {optimizer.rule.name!r})"
        )
    saved_schedulers = document["schedulers"]
    if len(saved_schedulers) != len(schedulers):
        raise ValueError(
            f"it holds {len(saved_schedulers)} scheduler states, {len(schedulers)} schedulers were given"
        )
    for i, (entry, scheduler) in enumerate(zip(saved_schedulers, schedulers)):
        if entry["class"] != type(scheduler).__name__:
            raise ValueError(
                f"schedulers[{i}] is a {type(scheduler).__name__}, the file holds a {entry['class']!r}"
            )


def _apply(path: str, optimizer: Optimizer, optimizer_state: Any,
           schedulers: list, scheduler_states: list) -> None:
    """Load the checked states, all or nothing.

    ``load_state_dict`` of the optimizer checks everything before it changes
    anything. Schedulers load after it; should one of them raise, the
    optimizer and the schedulers already loaded get their previous state back.
    The optimizer's comes back as the very same objects: ``load_state_dict``
    replaces the hyperparameters and state entries, never writing into the
    arrays, so shallow copies of the groups and the state list are enough.
    """
    previous_groups = [dict(group) for group in optimizer.param_groups]
    previous_state = list(optimizer.state)
    previous_schedulers = [scheduler.state_dict() for scheduler in schedulers]
    try:
        optimizer.load_state_dict(optimizer_state)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{path}: the checkpoint does not fit: {error}") from error
    loaded = 0
    try:
        for scheduler, state in zip(schedulers, scheduler_states):
            scheduler.load_state_dict(state)
            loaded += 1
    except BaseException as error:
        for group, previous in zip(optimizer.param_groups, previous_groups):
            group.clear()
            group.update(previous)
        optimizer.state[:] = previous_state
        for scheduler, state in zip(schedulers[:loaded], previous_schedulers):
            scheduler.load_state_dict(state)
        if loaded < len(schedulers):
            # The one that raised may have taken part of its state: give it its
            # own back if it will; the error to report is the first one.
            with contextlib.suppress(Exception):
                schedulers[loaded].load_state_dict(previous_schedulers[loaded])
        if isinstance(error, (ValueError, TypeError, KeyError)):
            raise ValueError(
                f"{path}: schedulers[{loaded}] rejected its saved state: {_message(error)}"
            ) from error
        raise


def _message(error: BaseException) -> str:
    """The error's text, with its type unless it is our own ValueError."""
    if type(error) is KeyError:  # its str() is only the repr of the key
        return f"missing key {error}"
    if type(error) is ValueError:
        return str(error)
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


# ------------------------------------------------------------ JSON encoding
# JSON has no tuples, no non-string keys and no arrays; these single-key
# objects stand for them. A real dict that looks like one is saved as pairs.
_TUPLE, _PAIRS, _ARRAY, _SCALAR = "__tuple__", "__pairs__", "__ndarray__", "__npscalar__"
# The .npy format has no bfloat16 (NumPy writes its bytes as a 2-byte void):
# such an array is stored as its raw bits, uint16, under these tags.
_BF16_ARRAY, _BF16_SCALAR = "__bfloat16_ndarray__", "__bfloat16_npscalar__"
_TAGS = (_TUPLE, _PAIRS, _ARRAY, _SCALAR, _BF16_ARRAY, _BF16_SCALAR)


class _Encoder:
    """Turns a value into JSON-ready data, setting its arrays aside in ``arrays``."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def encode(self, value: Any, where: str, depth: int = 0) -> Any:
        if type(value) in (list, tuple, dict):
            if depth >= MAX_NESTING:
                raise ValueError(f"cannot save {where}: nested deeper than {MAX_NESTING} levels")
            depth += 1
        if isinstance(value, (np.ndarray, np.generic)):
            array = np.asarray(value)
            if is_bfloat16(array.dtype):
                tag = _BF16_ARRAY if isinstance(value, np.ndarray) else _BF16_SCALAR
                return {tag: self._set_aside(array.view(np.uint16), where)}
            tag = _ARRAY if isinstance(value, np.ndarray) else _SCALAR
            return {tag: self._set_aside(array, where)}
        if value is None or type(value) in (bool, int, float, str):
            return value
        if type(value) is list:
            return [self.encode(item, f"{where}/{i}", depth) for i, item in enumerate(value)]
        if type(value) is tuple:
            return {_TUPLE: [self.encode(item, f"{where}/{i}", depth) for i, item in enumerate(value)]}
        if type(value) is dict:
            if all(type(key) is str for key in value) and not (len(value) == 1 and next(iter(value)) in _TAGS):
                return {key: self.encode(item, f"{where}/{key}", depth) for key, item in value.items()}
            return {_PAIRS: [[self.encode(key, f"{where}/key", depth), self.encode(item, f"{where}/{key}", depth)]
                             for key, item in value.items()]}
        raise TypeError(
            f"cannot save {where}: a {type(value).__name__} (a checkpoint holds None, bool, "
            "int, float, str, list, tuple, dict, NumPy scalars and arrays)"
        )

    def _set_aside(self, array: np.ndarray, where: str) -> str:
        if array.dtype.hasobject:
            raise TypeError(f"cannot save {where}: an array of dtype {array.dtype} holds Python objects")
        name, n = where, 1
        while name in self.arrays or name == _DOCUMENT:
            n += 1
            name = f"{where}#{n}"
        self.arrays[name] = array
        return name


class _Decoder:
    """The inverse of ``_Encoder``; every array entry must be used exactly once."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays
        self.unused = set(arrays)

    def decode(self, data: Any, depth: int = 0) -> Any:
        if not isinstance(data, (list, dict)):
            return data
        if depth >= MAX_NESTING:
            raise ValueError(f"values nested deeper than {MAX_NESTING} levels")
        depth += 1
        if isinstance(data, list):
            return [self.decode(item, depth) for item in data]
        if len(data) == 1 and next(iter(data)) in _TAGS:
            ((tag, inner),) = data.items()
            if tag == _TUPLE:
                return tuple(self.decode(_expect(inner, list, tag), depth))
            if tag == _PAIRS:
                pairs = [self.decode(_expect(pair, list, tag), depth) for pair in _expect(inner, list, tag)]
                if any(len(pair) != 2 for pair in pairs):
                    raise ValueError(f"a {tag} entry that is not a list of pairs")
                return {_hashable(key): value for key, value in pairs}
            array = self._take(_expect(inner, str, tag))
            if tag in (_BF16_ARRAY, _BF16_SCALAR):
                if array.dtype != np.uint16:
                    raise ValueError(f"entry {inner!r} should hold bfloat16 bits (uint16), has dtype {array.dtype}")
                array = array.view(bfloat16_dtype())
            if tag in (_SCALAR, _BF16_SCALAR):
                if array.ndim != 0:
                    raise ValueError(f"entry {inner!r} should be a scalar, has shape {array.shape}")
                return array[()]
            return array
        return {key: self.decode(value, depth) for key, value in data.items()}

    def _take(self, name: str) -> np.ndarray:
        if name not in self.unused:
            raise ValueError(f"no array entry {name!r}" if name not in self.arrays
                             else f"array entry {name!r} used twice")
        self.unused.discard(name)
        return self.arrays[name]

    def check_all_used(self) -> None:
        if self.unused:
            raise ValueError(f"array entries {sorted(self.unused)} belong to nothing in the document")


def _expect(value: Any, kind: type, tag: str) -> Any:
    if not isinstance(value, kind):
        raise ValueError(f"a {tag} entry holds a {type(value).__name__}, not a {kind.__name__}")
    return value


def _hashable(key: Any) -> Any:
    try:
        hash(key)
    except TypeError:
        raise ValueError(f"a dict key of type {type(key).__name__}") from None
    return key


# ---------------------------------------------------------------- the file
def _write_npz(file: IO[bytes], entries: dict[str, np.ndarray]) -> None:
    """The .npz layout ``np.savez`` writes (stored, zip64), from any entry names."""
    with zipfile.ZipFile(file, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in entries.items():
            with archive.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


def _read_npz(path: str) -> tuple[Any, dict[str, np.ndarray]]:
    """The JSON document and the arrays of the file at ``path``, all read and checked."""
    with open(path, "rb") as file:  # FileNotFoundError as it is
        try:
            if file.read(4) not in _ZIP_MAGICS:
                raise ValueError("not an .npz file (no zip header)")
            file.seek(0)
            with np.load(file, allow_pickle=False) as npz:
                _check_declared_sizes(npz.zip)
                # Reading each entry to its end also checks its zip CRC-32.
                arrays = {name: npz[name] for name in npz.files}
            if len(arrays) != len(npz.files):
                raise ValueError("two entries with the same name")
            not_arrays = [name for name, value in arrays.items() if not isinstance(value, np.ndarray)]
            if not_arrays:
                raise ValueError(f"entries {not_arrays} are not .npy arrays")
            text = arrays.pop(_DOCUMENT, None)
            if text is None or text.ndim != 0 or text.dtype.kind != "U":
                raise ValueError(f"no {_DOCUMENT!r} entry: an .npz file, but not a fusedopt checkpoint")
            document = json.loads(str(text[()]))
        except MemoryError:
            raise
        except Exception as error:
            # zipfile and numpy meet damaged bytes with a zoo of exceptions:
            # BadZipFile, RuntimeError (an "encrypted" flag), NotImplementedError
            # (a compression method), OSError (a negative seek), EOFError,
            # ValueError... The file opened, so each means: not a checkpoint.
            raise ValueError(f"{path}: not a valid fusedopt checkpoint: {_message(error)}") from error
    return document, arrays


def _check_declared_sizes(archive: zipfile.ZipFile) -> None:
    """Every .npy entry holds the bytes its header declares: a crafted header
    (shape 10**15) must not make the reader try to allocate it."""
    for info in archive.infolist():
        if not info.filename.endswith(".npy"):
            continue
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(member)
            declared = math.prod(shape) * dtype.itemsize
            held = info.file_size - member.tell()
        if declared > held:
            raise ValueError(
                f"entry {info.filename!r} declares shape {shape} of {dtype} ({declared:,} bytes) "
                f"but holds {held:,} bytes"
            )


def _write_atomically(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Replace ``path`` with what ``write`` writes, all or nothing, durably."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        previous_mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        previous_mode = None
    temp_path, file = _create_temporary(directory, os.path.basename(path))
    try:
        with file:
            write(file)
            if previous_mode is not None:
                os.chmod(temp_path, previous_mode)
            file.flush()
            os.fsync(file.fileno())  # data and mode on disk before the rename publishes them
        os.replace(temp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_path)
        raise
    _fsync_directory(directory)  # the rename itself survives a crash


def _create_temporary(directory: str, name: str) -> tuple[str, IO[bytes]]:
    """A new file beside the target, created with mode 0o666 & ~umask as
    ``open()`` would (``tempfile.mkstemp`` makes it 0o600)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        temp_path = os.path.join(directory, f".{name[:200]}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(temp_path, flags, 0o666)
        except FileExistsError:
            continue
        return temp_path, os.fdopen(fd, "wb")
    raise FileExistsError(f"could not create a temporary file in {directory}")


def _fsync_directory(directory: str) -> None:
    if os.name == "nt":  # a directory cannot be opened there; NTFS journals the rename
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
