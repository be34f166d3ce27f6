"""espeak-ng, the one synthesizer both corpora use: its command-line binary
(:func:`espeak_synthesize`, many calls side by side, for the keyword-spotting
corpus) and its C library ``libespeak-ng.so.1`` (:class:`Espeak`, through
``ctypes``, for the synthesis corpus: the library reports where each phoneme
starts, which the binary does not). Both raise
:class:`EspeakUnavailableError` with the install hint when espeak-ng is
missing."""

from __future__ import annotations

import ctypes
import functools
import io
import os
import pickle
import shutil
import subprocess
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import numpy as np

ESPEAK_INSTALL_HINT = (
    "install it with `apt-get install -y espeak-ng` (Debian/Ubuntu; "
    "`brew install espeak-ng` on macOS), set PROXOPT_ESPEAK to the binary, "
    "or pass --data FILE.npz with your own corpus"
)


class EspeakUnavailableError(RuntimeError):
    """espeak-ng (its binary or its library) is not installed or does not run."""


# --------------------------------------------------------------------------
# The binary
# --------------------------------------------------------------------------


def espeak_binary() -> str | None:
    """Path of the espeak-ng binary ($PROXOPT_ESPEAK, else ``espeak-ng`` on PATH)."""
    env = os.environ.get("PROXOPT_ESPEAK")
    if env:
        return env if (os.path.exists(env) or shutil.which(env)) else None
    return shutil.which("espeak-ng")


def espeak_version() -> str:
    exe = espeak_binary()
    if exe is None:
        raise EspeakUnavailableError(f"espeak-ng was not found: {ESPEAK_INSTALL_HINT}")
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as e:
        raise EspeakUnavailableError(f"espeak-ng at {exe} does not run ({e}): {ESPEAK_INSTALL_HINT}") from e
    return out.stdout.strip().split(" Data at")[0]


@functools.lru_cache(maxsize=4)
def _espeak_variants(exe: str) -> frozenset[str]:
    out = subprocess.run([exe, "--voices=variant"], capture_output=True, text=True, timeout=60)
    names = set()
    for line in out.stdout.splitlines()[1:]:
        for field_ in line.split():
            if field_.startswith("!v/"):
                names.add(field_[3:])
    return frozenset(names)


def espeak_variants() -> frozenset[str]:
    """The voice variants (``+m3``, ``+f2``, ``+klatt`` ...) this espeak-ng knows."""
    exe = espeak_binary()
    if exe is None:
        raise EspeakUnavailableError(f"espeak-ng was not found: {ESPEAK_INSTALL_HINT}")
    return _espeak_variants(exe)


def espeak_available() -> bool:
    """True when espeak-ng runs and can synthesize a word."""
    try:
        espeak_version()
        wav, sr = espeak_synthesize("yes", "en")
        return sr > 0 and len(wav) > 0
    except (EspeakUnavailableError, RuntimeError):
        return False


def _parse_wav(data: bytes) -> tuple[np.ndarray, int]:
    """A 16-bit PCM WAV from espeak-ng --stdout (whose size fields are
    placeholders: soundfile reads to the end of the stream) as float32 in
    [-1, 1) (int16 / 32768) and its sample rate; channels are averaged."""
    import soundfile  # noqa: PLC0415

    try:
        wav, sr = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as e:
        raise RuntimeError(f"espeak-ng did not write a readable WAV ({len(data)} bytes): {e}") from e
    return wav.mean(axis=1) if wav.shape[1] > 1 else wav[:, 0], int(sr)


def espeak_synthesize(text: str, voice: str, rate: int = 175, pitch: int = 50) -> tuple[np.ndarray, int]:
    """Speak ``text`` with espeak-ng; returns (float32 waveform, sample rate)."""
    exe = espeak_binary()
    if exe is None:
        raise EspeakUnavailableError(f"espeak-ng was not found: {ESPEAK_INSTALL_HINT}")
    cmd = [exe, "-v", voice, "-s", str(int(rate)), "-p", str(int(pitch)), "--stdout", text]
    try:
        res = subprocess.run(cmd, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        raise EspeakUnavailableError(f"espeak-ng failed to run ({e}): {ESPEAK_INSTALL_HINT}") from e
    if res.returncode != 0:
        raise RuntimeError(f"espeak-ng failed for voice {voice!r}: {res.stderr.decode(errors='replace').strip()}")
    wav, sr = _parse_wav(res.stdout)
    if len(wav) == 0 or not np.any(wav):
        raise RuntimeError(f"espeak-ng produced no audio for {text!r} with voice {voice!r} (unknown voice?)")
    return wav, sr


def espeak_synthesize_many(
    calls: Sequence[tuple[str, str, int, int]], workers: int | None = None
) -> list[tuple[np.ndarray, int]]:
    """Run many ``(text, voice, rate, pitch)`` syntheses, ``workers`` espeak-ng
    processes at a time (threads that each wait on one ``espeak-ng --stdout``
    child; default one per core). Results in call order; each call is
    deterministic, so the result does not depend on ``workers``."""
    workers = max(1, min(workers or os.cpu_count() or 1, len(calls) or 1))
    if workers == 1:
        return [espeak_synthesize(*c) for c in calls]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda c: espeak_synthesize(*c), calls))


# --------------------------------------------------------------------------
# The C library (speak_lib.h, API revision 12)
# --------------------------------------------------------------------------

LIBESPEAK_ENV = "PROXOPT_LIBESPEAK"  # a path to libespeak-ng.so.1, to override the search
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_PHONEME = 7
_RATE, _PITCH = 1, 3
_EE_OK = 0


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    """``espeak_EVENT``."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # ms
        ("sample", ctypes.c_int),  # samples from the start of the message
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


class PhonemeEvent(NamedTuple):
    name: str  # espeak-ng's phoneme mnemonic (``h``, ``@``, ``oU``, ``_:`` for a pause)
    sample: int  # where it starts in the audio
    audio_ms: int  # the same in milliseconds, as espeak-ng reports it
    text_position: int  # character of the text it comes from (1-based)


class Spoken(NamedTuple):
    audio: np.ndarray  # float32 [samples], int16 / 32768
    sample_rate: int
    phonemes: list[PhonemeEvent]


# One Espeak per loaded library (keyed by its dlopen handle, the same whatever
# name loaded it), kept for the life of the process: the library's synth
# callback is global, so a second instance would re-initialise the library and
# take the callback over, and a collected instance would leave the library
# calling freed code. Each instance holds its CFUNCTYPE callback.
_INSTANCES: dict[int, "Espeak"] = {}
_INSTANCES_LOCK = threading.RLock()


class Espeak:
    """libespeak-ng: audio and phoneme events of a text.

    The library keeps global state (its synth callback among it), so there is
    one instance per loaded library, for the life of the process: get it from
    :func:`open_espeak` or :func:`espeak_library`, not by calling the class.
    It initialises the library and never synthesizes in this process:
    :meth:`speak` synthesizes in a forked child (POSIX only), one call at a
    time."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        with _INSTANCES_LOCK:
            if lib._handle in _INSTANCES:
                raise RuntimeError(f"{lib._name} already has its Espeak instance: use open_espeak(), which returns it")
            self._initialise(lib)
            _INSTANCES[lib._handle] = self

    def _initialise(self, lib: ctypes.CDLL) -> None:
        self._lib = lib
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
        ]  # fmt: skip
        self.sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INITIALIZE_PHONEME_EVENTS)
        if self.sample_rate <= 0:
            raise EspeakUnavailableError(f"libespeak-ng failed to initialise (its data not found?): {ESPEAK_INSTALL_HINT}")
        data_path = ctypes.c_char_p()
        self.version = lib.espeak_Info(ctypes.byref(data_path)).decode()
        self.data_path = Path(data_path.value.decode()) if data_path.value else None
        self._chunks: list[np.ndarray] = []
        self._events: list[PhonemeEvent] = []
        self._callback_error: BaseException | None = None
        self._callback = _SynthCallback(self._on_synth)  # registered once; the instance lives as long as the process
        lib.espeak_SetSynthCallback(self._callback)
        self._lock = threading.Lock()

    def _on_synth(self, wav, n, events) -> int:
        """The synth callback: keeps the audio and the phoneme events. An
        exception here would be printed and dropped by ctypes (synthesis going
        on with missing audio), so it is stored, synthesis is aborted (return
        1) and :meth:`_speak_here` raises it once ``espeak_Synth`` returns."""
        try:
            if n > 0:
                self._chunks.append(np.ctypeslib.as_array(wav, (n,)).copy())
            i = 0
            while events[i].type != _EVENT_LIST_TERMINATED:
                e = events[i]
                if e.type == _EVENT_PHONEME:
                    name = e.id.string.decode("utf-8", errors="replace")  # .value: up to the NUL, or all 8 bytes
                    self._events.append(PhonemeEvent(name, int(e.sample), int(e.audio_position), int(e.text_position)))
                i += 1
        except BaseException as e:  # noqa: BLE001 -- re-raised after espeak_Synth returns
            if self._callback_error is None:
                self._callback_error = e
            return 1  # abort synthesis
        return 0  # continue synthesis

    def variants(self) -> frozenset[str] | None:
        """The voice variants in espeak-ng's data (``voices/!v``), or None if it cannot tell."""
        d = self.data_path / "voices" / "!v" if self.data_path else None
        return frozenset(p.name for p in d.iterdir()) if d is not None and d.is_dir() else None

    def speak(self, text: str, voice: str, rate: int = 175, pitch: int = 50) -> Spoken:
        """Synthesize ``text`` with ``voice`` (``<language>[+<variant>]``) at ``rate``
        words per minute and ``pitch`` (0..99).

        espeak-ng keeps state from one synthesis to the next (its wave
        generator's phase: the same call twice in a row differs by a few
        samples), so each call runs in a forked child process, which starts
        from this process's freshly initialised library: the result depends
        on the arguments only."""
        language, _, variant = voice.partition("+")
        known = self.variants()
        if variant and known is not None and variant not in known:  # espeak-ng would silently use the default
            raise ValueError(f"Invalid voice: {voice!r} (espeak-ng has no variant {variant!r})")
        call = f"synthesizing {text!r} with voice {voice!r} (rate {rate}, pitch {pitch})"
        with self._lock:
            read_fd, write_fd = os.pipe()
            try:
                pid = os.fork()
            except BaseException:
                os.close(read_fd)
                os.close(write_fd)
                raise
            if pid == 0:
                self._child(read_fd, write_fd, call, text, voice, rate, pitch)  # never returns
            os.close(write_fd)
            try:
                with os.fdopen(read_fd, "rb") as f:
                    blob = f.read()
            finally:
                _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            how = f"was killed by signal {-code}" if code < 0 else f"failed (exit status {code})"
            raise RuntimeError(f"espeak-ng's child process {how} {call}")
        if not blob:
            raise RuntimeError(f"espeak-ng's child process sent nothing back {call}")
        result = pickle.loads(blob)
        if isinstance(result, BaseException):
            raise result
        return result

    def _child(self, read_fd: int, write_fd: int, call: str, text: str, voice: str, rate: int, pitch: int) -> NoReturn:
        """The forked child of :meth:`speak`: synthesize, send the pickled
        result (or the error) down the pipe and exit without cleanup: exit
        status 0 once it is sent, 1 if anything failed. Never returns or raises
        into the parent's code (whose copy the child is)."""
        ok = False
        try:
            os.close(read_fd)
            try:
                result: Any = self._speak_here(text, voice, rate, pitch)
            except BaseException as e:  # noqa: BLE001 -- every error goes back to the parent
                result = e
            try:
                blob = pickle.dumps(result)
            except Exception as e:  # noqa: BLE001 -- an unpicklable result or error: send its description
                blob = pickle.dumps(RuntimeError(f"espeak-ng's child process could not send {result!r} back ({e!r}) {call}"))
            with os.fdopen(write_fd, "wb") as f:
                f.write(blob)
            ok = True
        finally:
            os._exit(0 if ok else 1)

    def _speak_here(self, text: str, voice: str, rate: int, pitch: int) -> Spoken:
        language = voice.partition("+")[0]
        blob = text.encode("utf-8") + b"\0"
        if self._lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
            raise ValueError(f"Invalid voice: {voice!r} (espeak-ng has no language {language!r})")
        self._lib.espeak_SetParameter(_RATE, int(rate), 0)
        self._lib.espeak_SetParameter(_PITCH, int(pitch), 0)
        self._chunks, self._events, self._callback_error = [], [], None
        err = self._lib.espeak_Synth(blob, len(blob), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        chunks, events, callback_error = self._chunks, self._events, self._callback_error
        self._chunks, self._events, self._callback_error = [], [], None
        if callback_error is not None:
            raise callback_error
        if err != _EE_OK:
            raise RuntimeError(f"espeak_Synth failed ({err}) for {text!r} with voice {voice!r}")
        audio = (np.concatenate(chunks) if chunks else np.zeros(0, np.int16)).astype(np.float32) / 32768.0
        if audio.size == 0 or not events:
            raise RuntimeError(f"espeak-ng produced no audio or no phoneme events for {text!r} with voice {voice!r}")
        starts = np.array([e.sample for e in events])
        if (np.diff(starts) < 0).any() or starts[0] < 0 or starts[-1] > len(audio):
            raise RuntimeError(
                f"espeak-ng's phoneme positions {starts.tolist()} are not increasing within the {len(audio)} samples of {text!r}"
            )
        return Spoken(audio, self.sample_rate, events)


@functools.lru_cache(maxsize=1)
def espeak_library() -> Espeak:
    """The process's :class:`Espeak`: ``$PROXOPT_LIBESPEAK`` when set, else
    ``libespeak-ng.so.1`` (or what ``ctypes.util.find_library`` finds).

    Raises :class:`EspeakUnavailableError` when the library is absent."""
    import ctypes.util  # noqa: PLC0415

    if os.environ.get(LIBESPEAK_ENV):
        return open_espeak([os.environ[LIBESPEAK_ENV]])
    return open_espeak(["libespeak-ng.so.1", ctypes.util.find_library("espeak-ng") or "libespeak-ng.dylib"])


def open_espeak(candidates: Sequence[str]) -> Espeak:
    """The :class:`Espeak` of the first of ``candidates`` (library names or
    paths) that loads: made and initialised on the first call for that
    library, the same instance on every later call (whatever name reaches it)."""
    errors = []
    for name in candidates:
        try:
            lib = ctypes.CDLL(name)
        except OSError as e:
            errors.append(str(e))
            continue
        with _INSTANCES_LOCK:
            return _INSTANCES.get(lib._handle) or Espeak(lib)
    raise EspeakUnavailableError(
        f"libespeak-ng (the espeak-ng C library, Debian's libespeak-ng1) was not found ({'; '.join(errors)}): "
        f"{ESPEAK_INSTALL_HINT}; or set {LIBESPEAK_ENV} to the library's path"
    )
