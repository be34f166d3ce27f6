"""What both corpora's files share: the format error naming the file, and
``.npz`` reading and atomic writing."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np


class CorpusFormatError(ValueError):
    """A corpus file does not follow the documented ``.npz`` format."""


def format_error(path: str, msg: str) -> CorpusFormatError:
    """The error for a problem ``msg`` in the corpus file ``path`` (named first)."""
    return CorpusFormatError(f"{path}: {msg}")


def read_npz(path: str | os.PathLike, allow_pickle: bool) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file; :class:`CorpusFormatError` if it is not
    one (or, without ``allow_pickle``, holds pickled objects)."""
    path = str(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such corpus file")
    try:
        with np.load(path, allow_pickle=allow_pickle) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # not a zip / not an npz / a broken or forbidden pickle
        if isinstance(e, (KeyboardInterrupt, MemoryError)):
            raise
        what = "" if allow_pickle else " without pickled objects"
        raise CorpusFormatError(f"{path}: not a readable .npz file{what} ({e})") from e


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """``numpy.savez`` to a temporary name beside ``path``, then a rename: a
    crash never leaves a half-written corpus. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp.npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide a shared cache from other users
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
