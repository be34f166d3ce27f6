"""The cache of synthesized corpora, shared by the keyword-spotting and the
synthesis corpus: a file per spec under ``<cache>/speech/<kind>-<key>.npz``,
keyed by a hash of the spec and of what else makes a different corpus (the
format version, espeak-ng's version, the resampler). A cached file that no
longer loads is made again."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any


def default_cache_dir() -> Path:
    """``$PROXOPT_CACHE``, else ``$XDG_CACHE_HOME/proxopt``, else ``~/.cache/proxopt``."""
    env = os.environ.get("PROXOPT_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "proxopt"


def spec_key(spec: Any, **versions: Any) -> str:
    """The cache key of a dataclass ``spec`` and ``versions`` (format, synthesizer, ...)."""
    blob = json.dumps({"spec": dataclasses.asdict(spec), **versions}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _copy(src: Path, out: str | os.PathLike | None) -> Path:
    """``src``, copied to ``out`` when that is another file."""
    if out is None or Path(out).resolve() == src.resolve():
        return src
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, out)
    return Path(out)


def cached_corpus(
    kind: str,
    key: str,
    make: Callable[[Path], Path],
    load: Callable[[Path], Any],
    invalid: type[Exception],
    out: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    log: Callable[[str], None] | None = None,
) -> Path:
    """The corpus file ``<kind>-<key>.npz`` of the cache, made by ``make(path)``
    unless a copy that ``load`` accepts is there (one it rejects with
    ``invalid`` is made again); also copied to ``out`` when given, whose path
    is then returned. Without ``use_cache`` the corpus is made at ``out``
    (or the cache path) and the cache is not read."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cached = cache / "speech" / f"{kind}-{key}.npz"
    if use_cache and cached.exists():
        try:
            load(cached)
        except invalid:
            cached.unlink()
        else:
            if log:
                log(f"[{kind}-corpus] cached {cached}")
            return _copy(cached, out)
    target = cached if use_cache else Path(out if out is not None else cached)
    return _copy(make(target), out)
