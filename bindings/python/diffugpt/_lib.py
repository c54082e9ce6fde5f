"""Low-level ctypes declarations for ``libdiffugpt`` (mirrors ``include/diffugpt.h``).

Everything here is private; the public API lives in :mod:`diffugpt`. Struct layouts follow the
header field by field (ctypes applies the platform's C alignment rules, like the Rust
``#[repr(C)]`` definitions). Params structs are always obtained from the library's
``dgpt_*_default_params()`` functions, which set their ``size`` field; this module never sets it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import enum
import os
import sys
import threading
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_bool,
    c_char_p,
    c_double,
    c_float,
    c_int32,
    c_int64,
    c_size_t,
    c_uint32,
    c_uint64,
    c_void_p,
)
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

# The C ABI version this binding was written against (major, minor). 0.x minors may change the
# ABI, so both must match; patch releases are accepted.
ABI_VERSION: Tuple[int, int] = (0, 1)

INT32_MIN = -(2**31)

# --- constants (#define in the header) -----------------------------------------------------------

DGPT_LENGTH_FIXED = 0
DGPT_LENGTH_EOS_FIRST = 1

DGPT_PREDICTOR_ARGMAX = 0
DGPT_PREDICTOR_THRESHOLD = 1
DGPT_PREDICTOR_QUANTILE = 2
DGPT_PREDICTOR_ORACLE = 3

DGPT_STRATEGY_RANDOM = 0
DGPT_STRATEGY_CONFIDENCE = 1
DGPT_STRATEGY_MARGIN = 2
DGPT_STRATEGY_ENTROPY = 3


class Status(enum.IntEnum):
    """``dgpt_status`` codes. Values are fixed forever; new codes are only appended."""

    OK = 0
    NULL_ARG = 1
    INVALID_ARG = 2
    UTF8 = 3
    IO = 4
    BAD_WEIGHTS = 5
    CONFIG = 6
    TOKENIZER = 7
    PROMPT = 8
    MEMORY = 9
    BACKEND = 10
    PANIC = 11
    ABI = 12
    ABORTED = 13
    BUSY = 14


class DiffuGPTError(Exception):
    """An error reported by libdiffugpt (or by this binding on its behalf).

    ``status`` is a :class:`Status` (a plain ``int`` for codes newer than this binding) and
    ``message`` the library's ``dgpt_last_error()`` text.
    """

    def __init__(self, status: Union[Status, int], message: str) -> None:
        try:
            status = Status(status)
        except ValueError:
            status = int(status)
        self.status: Union[Status, int] = status
        self.message: str = message
        super().__init__(status, message)

    def __str__(self) -> str:
        name = self.status.name if isinstance(self.status, Status) else f"status {self.status}"
        return f"{self.message} [{name}]" if self.message else f"[{name}]"


class LibraryError(DiffuGPTError):
    """libdiffugpt could not be found or loaded, or is an incompatible version."""

    def __init__(self, message: str) -> None:
        super().__init__(Status.IO, message)


class ClosedError(DiffuGPTError, ValueError):
    """The model or session was already closed."""

    def __init__(self, message: str) -> None:
        super().__init__(Status.NULL_ARG, message)


# --- types ---------------------------------------------------------------------------------------

dgpt_progress_callback = CFUNCTYPE(c_bool, c_float, c_void_p)
dgpt_step_callback = CFUNCTYPE(c_bool, c_uint32, c_uint32, POINTER(c_uint32), c_size_t, c_void_p)
dgpt_abort_callback = CFUNCTYPE(c_bool, c_void_p)


class dgpt_model_params(Structure):
    _fields_ = [
        ("size", c_size_t),
        ("device", c_uint32),
        ("n_threads", c_uint32),
        ("dtype", c_uint32),
        ("tokenizer_path", c_char_p),
        ("eos_id", c_int64),
        ("mask_id", c_int64),
        ("pad_id", c_int64),
        ("check_finite", c_bool),
        ("progress_callback", dgpt_progress_callback),
        ("progress_user_data", c_void_p),
    ]


class dgpt_model_info(Structure):
    _fields_ = [
        ("vocab_size", c_uint32),
        ("n_positions", c_uint32),
        ("n_layer", c_uint32),
        ("n_embd", c_uint32),
        ("eos_id", c_uint32),
        ("mask_id", c_uint32),
        ("pad_id", c_int64),
        ("n_params", c_uint64),
        ("has_tokenizer", c_bool),
    ]


class dgpt_generate_params(Structure):
    _fields_ = [
        ("size", c_size_t),
        ("canvas_len", c_uint32),
        ("steps", c_uint32),
        ("steps_per_token", c_float),
        ("strategy", c_uint32),
        ("temperature", c_float),
        ("top_k", c_uint32),
        ("top_p", c_float),
        ("repetition_penalty", c_float),
        ("seed", c_uint64),
        ("length_mode", c_uint32),
        ("predictor", c_uint32),
        ("predictor_value", c_float),
        ("oracle_len", c_uint32),
        ("margin", c_uint32),
        ("margin_ratio", c_float),
        ("grow", c_bool),
        ("ban_mask", c_bool),
        ("arm", c_bool),
        ("step_callback", dgpt_step_callback),
        ("step_user_data", c_void_p),
        ("abort_callback", dgpt_abort_callback),
        ("abort_user_data", c_void_p),
        ("memory_limit_bytes", c_uint64),
        ("end_floor", c_float),
    ]


class dgpt_stats(Structure):
    _fields_ = [
        ("predicted_len", c_int64),
        ("final_len", c_uint64),
        ("canvas_len", c_uint64),
        ("final_canvas_len", c_uint64),
        ("steps", c_uint64),
        ("forward_passes", c_uint64),
        ("positions_processed", c_uint64),
        ("grow_events", c_uint64),
        ("cancelled", c_bool),
        ("elapsed_s", c_double),
    ]


# Opaque handles are passed as void pointers.
dgpt_model_p = c_void_p
dgpt_session_p = c_void_p
dgpt_result_p = c_void_p
dgpt_status = c_uint32  # a uint32_t before C23

# name -> (restype, argtypes): every function of the header.
_SIGNATURES: Dict[str, Tuple[object, List[object]]] = {
    "dgpt_version": (c_char_p, []),
    "dgpt_last_error": (c_char_p, []),
    "dgpt_last_status": (dgpt_status, []),
    "dgpt_status_str": (c_char_p, [c_uint32]),
    "dgpt_model_default_params": (dgpt_model_params, []),
    "dgpt_model_load": (
        dgpt_status,
        [c_char_p, POINTER(dgpt_model_params), POINTER(dgpt_model_p)],
    ),
    "dgpt_model_free": (None, [dgpt_model_p]),
    "dgpt_model_get_info": (dgpt_status, [dgpt_model_p, POINTER(dgpt_model_info)]),
    "dgpt_session_new": (dgpt_status, [dgpt_model_p, POINTER(dgpt_session_p)]),
    "dgpt_session_free": (None, [dgpt_session_p]),
    "dgpt_generate_default_params": (dgpt_generate_params, []),
    "dgpt_generate": (
        dgpt_status,
        [dgpt_session_p, c_char_p, POINTER(dgpt_generate_params), POINTER(dgpt_result_p)],
    ),
    "dgpt_generate_tokens": (
        dgpt_status,
        [
            dgpt_session_p,
            POINTER(c_uint32),
            c_size_t,
            POINTER(dgpt_generate_params),
            POINTER(dgpt_result_p),
        ],
    ),
    "dgpt_result_text": (ctypes.c_void_p, [dgpt_result_p]),
    "dgpt_result_text_len": (c_size_t, [dgpt_result_p]),
    "dgpt_result_tokens": (POINTER(c_uint32), [dgpt_result_p, POINTER(c_size_t)]),
    "dgpt_result_stats": (dgpt_status, [dgpt_result_p, POINTER(dgpt_stats)]),
    "dgpt_result_free": (None, [dgpt_result_p]),
    "dgpt_tokenize": (c_int32, [dgpt_model_p, c_char_p, POINTER(c_uint32), c_int32]),
    "dgpt_detokenize": (
        c_int32,
        [dgpt_model_p, POINTER(c_uint32), c_size_t, ctypes.c_char_p, c_int32],
    ),
}


class Library:
    """A loaded, version-checked libdiffugpt with every function declared."""

    def __init__(self, path: str, cdll: ctypes.CDLL) -> None:
        self.path = path
        self.cdll = cdll
        for name, (restype, argtypes) in _SIGNATURES.items():
            try:
                fn = getattr(cdll, name)
            except AttributeError:
                raise LibraryError(
                    f"{path} does not export {name}(); it is not a compatible libdiffugpt"
                ) from None
            fn.restype = restype
            fn.argtypes = argtypes
            setattr(self, name, fn)
        raw = self.dgpt_version()
        self.version: str = raw.decode("utf-8", "replace") if raw else ""
        parts = self.version.split(".")
        try:
            major_minor = (int(parts[0]), int(parts[1]))
        except (IndexError, ValueError):
            raise LibraryError(
                f"{path} reports an unparsable version {self.version!r}"
            ) from None
        if major_minor != ABI_VERSION:
            raise LibraryError(
                f"{path} is libdiffugpt {self.version}, but this binding needs "
                f"{ABI_VERSION[0]}.{ABI_VERSION[1]}.x"
            )
        # The structs are returned by value, so their sizes must agree exactly.
        for fn, struct in (
            (self.dgpt_model_default_params, dgpt_model_params),
            (self.dgpt_generate_default_params, dgpt_generate_params),
        ):
            got = fn().size
            if got != ctypes.sizeof(struct):
                raise LibraryError(
                    f"{path}: {struct.__name__} is {got} bytes in the library but "
                    f"{ctypes.sizeof(struct)} in this binding (ABI mismatch)"
                )

    if TYPE_CHECKING:  # the dgpt_* functions are set in __init__

        def __getattr__(self, name: str) -> Any: ...

    def last_error(self) -> str:
        raw = self.dgpt_last_error()
        return raw.decode("utf-8", "replace") if raw else ""

    def status_str(self, status: int) -> str:
        raw = self.dgpt_status_str(status)
        return raw.decode("utf-8", "replace") if raw else ""

    def error(self, status: int, fallback: str = "") -> DiffuGPTError:
        """The exception for a failed call: must be built right after the call (same thread)."""
        msg = self.last_error() or fallback or self.status_str(status)
        return DiffuGPTError(status, msg)

    def check(self, status: int) -> None:
        if status != Status.OK:
            raise self.error(status)


_cache: Dict[str, Library] = {}
_cache_lock = threading.Lock()


def _lib_names() -> List[str]:
    if sys.platform == "win32":
        return ["diffugpt.dll", "libdiffugpt.dll"]
    if sys.platform == "darwin":
        return ["libdiffugpt.dylib", "libdiffugpt.so"]
    return ["libdiffugpt.so"]


def _open(path: str) -> Library:
    key = os.path.abspath(path) if os.sep in path or os.path.exists(path) else path
    with _cache_lock:
        lib = _cache.get(key)
        if lib is None:
            try:
                cdll = ctypes.CDLL(path)
            except OSError as e:
                raise LibraryError(f"cannot load libdiffugpt from {path!r}: {e}") from None
            lib = Library(path, cdll)
            _cache[key] = lib
        return lib


def load_library(lib_path: Optional[Union[str, "os.PathLike[str]"]] = None) -> Library:
    """Finds and loads libdiffugpt.

    Order: ``lib_path`` if given; else ``$DIFFUGPT_LIB`` if set; else a copy inside this package;
    else ``ctypes.util.find_library("diffugpt")`` (system paths); else ``target/release`` of the
    source checkout this file lives in (development only). An explicit path or ``$DIFFUGPT_LIB``
    that fails is an error (no silent fallback).
    """
    if lib_path is not None:
        return _open(os.fspath(lib_path))
    env = os.environ.get("DIFFUGPT_LIB")
    if env:
        try:
            return _open(env)
        except LibraryError as e:
            raise LibraryError(f"$DIFFUGPT_LIB: {e.message}") from None
    tried: List[str] = []
    here = Path(__file__).resolve().parent
    candidates = [str(here / n) for n in _lib_names()]
    found = ctypes.util.find_library("diffugpt")
    candidates.append(found if found else "find_library('diffugpt') -> not found")
    # bindings/python/diffugpt/_lib.py -> <repo>/target/release (only in a source checkout).
    repo = here.parent.parent.parent
    candidates += [str(repo / "target" / "release" / n) for n in _lib_names()]
    for c in candidates:
        if c.startswith("find_library"):
            tried.append(c)
            continue
        if os.sep in c and not os.path.exists(c):
            tried.append(f"{c} (missing)")
            continue
        try:
            return _open(c)
        except LibraryError as e:
            tried.append(f"{c} ({e.message})")
    raise LibraryError(
        "libdiffugpt not found; build it with `cargo build --release` and pass lib_path=... or "
        "set DIFFUGPT_LIB=/path/to/libdiffugpt.so. Tried: lib_path=None, $DIFFUGPT_LIB unset, "
        + "; ".join(tried)
    )
