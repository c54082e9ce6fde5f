"""The Pythonic API over :mod:`diffugpt._lib`."""

from __future__ import annotations

import math
import operator
import os
import threading
from contextlib import contextmanager
from ctypes import byref, c_size_t, c_uint32, create_string_buffer, string_at
from dataclasses import dataclass
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Literal,
    Optional,
    Sequence,
    Tuple,
    Union,
)


from . import _lib
from ._lib import (
    INT32_MIN,
    ClosedError,
    DiffuGPTError,
    Library,
    Status,
    load_library,
)

__all__ = [
    "Model",
    "Session",
    "ModelInfo",
    "Stats",
    "Result",
    "version",
    "StepCallback",
    "AbortCallback",
    "ProgressCallback",
]

StrategyName = Literal["random", "confidence", "margin", "entropy"]
LengthModeName = Literal["fixed", "eos-first"]
PredictorName = Literal["argmax", "threshold", "quantile", "oracle"]

#: ``on_step(step, total_steps, canvas) -> bool | None``; return False to stop (None continues).
StepCallback = Callable[[int, int, List[int]], Optional[bool]]
#: ``should_abort() -> bool``; polled before each step, True stops.
AbortCallback = Callable[[], bool]
#: ``progress(fraction) -> bool | None`` during loading.
ProgressCallback = Callable[[float], Optional[bool]]

PathLike = Union[str, "os.PathLike[str]"]

_STRATEGIES: Dict[str, int] = {
    "random": _lib.DGPT_STRATEGY_RANDOM,
    "confidence": _lib.DGPT_STRATEGY_CONFIDENCE,
    "margin": _lib.DGPT_STRATEGY_MARGIN,
    "entropy": _lib.DGPT_STRATEGY_ENTROPY,
}
_LENGTH_MODES: Dict[str, int] = {
    "fixed": _lib.DGPT_LENGTH_FIXED,
    "eos-first": _lib.DGPT_LENGTH_EOS_FIRST,
}
_PREDICTORS: Dict[str, int] = {
    "argmax": _lib.DGPT_PREDICTOR_ARGMAX,
    "threshold": _lib.DGPT_PREDICTOR_THRESHOLD,
    "quantile": _lib.DGPT_PREDICTOR_QUANTILE,
    "oracle": _lib.DGPT_PREDICTOR_ORACLE,
}
_ENUMS: Dict[str, Dict[str, int]] = {
    "strategy": _STRATEGIES,
    "length_mode": _LENGTH_MODES,
    "predictor": _PREDICTORS,
}
_UINT32 = ("canvas_len", "steps", "top_k", "oracle_len", "margin")
_UINT64 = ("seed", "memory_limit_bytes")
_FLOAT = (
    "steps_per_token",
    "temperature",
    "top_p",
    "repetition_penalty",
    "predictor_value",
    "margin_ratio",
    "end_floor",
)
_BOOL = ("grow", "ban_mask", "arm")


def version(lib_path: Optional[PathLike] = None) -> str:
    """The version string of the C library (``dgpt_version()``)."""
    return load_library(lib_path).version


# --- value conversion ----------------------------------------------------------------------------


def _int_in(value: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool):
        v = int(value)
    else:
        try:
            v = operator.index(value)
        except TypeError:
            raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if not lo <= v <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {v}")
    return v


def _float(value: Any, name: str) -> float:
    if isinstance(value, (str, bytes)) or not (
        hasattr(value, "__float__") or hasattr(value, "__index__")
    ):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    return float(value)


def _bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {value!r}")


def _enum(value: Any, name: str) -> int:
    choices = _ENUMS[name]
    if isinstance(value, str):
        key = value.strip().lower().replace("_", "-")
        if key not in choices:
            raise ValueError(
                f"unknown {name} {value!r}; expected one of {', '.join(map(repr, choices))} "
                "or an int"
            )
        return choices[key]
    return _int_in(value, name, 0, 2**32 - 1)


def _c_string(text: Any, name: str) -> bytes:
    if isinstance(text, os.PathLike):
        text = os.fspath(text)
    if isinstance(text, str):
        b = text.encode("utf-8")
    elif isinstance(text, bytes):
        b = text
    else:
        raise TypeError(f"{name} must be a str, got {type(text).__name__}")
    if b"\0" in b:
        raise ValueError(f"{name} must not contain NUL characters")
    return b


def _path(p: PathLike, name: str) -> bytes:
    try:
        b = os.fsencode(p)
    except TypeError:
        raise TypeError(f"{name} must be a str or os.PathLike, got {type(p).__name__}") from None
    if b"\0" in b:
        raise ValueError(f"{name} must not contain NUL characters")
    return b


def _u32_array(ids: Iterable[int], name: str) -> Tuple[Any, int]:
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of ints, got {type(ids).__name__}")
    vals = [_int_in(t, f"{name} id", 0, 2**32 - 1) for t in ids]
    return (c_uint32 * len(vals))(*vals), len(vals)


# --- handles -------------------------------------------------------------------------------------


class _Handle:
    """A C pointer with its free function; freed once, after the last in-flight use."""

    __slots__ = ("_ptr", "_free", "_what", "_lock", "_users", "_closing")

    def __init__(self, ptr: int, free: Callable[[int], None], what: str) -> None:
        self._ptr: Optional[int] = ptr
        self._free = free
        self._what = what
        self._lock = threading.Lock()
        self._users = 0
        self._closing = False

    @property
    def closed(self) -> bool:
        return self._ptr is None or self._closing

    @contextmanager
    def use(self, exclusive: bool = False) -> Iterator[int]:
        with self._lock:
            if self._ptr is None or self._closing:
                raise ClosedError(f"the {self._what} is closed")
            if exclusive and self._users:
                raise RuntimeError(
                    f"the {self._what} is already in use; a session serves one call at a time "
                    "(create one session per thread)"
                )
            self._users += 1
            ptr = self._ptr
        try:
            yield ptr
        finally:
            with self._lock:
                self._users -= 1
                free_now = self._closing and self._users == 0
            if free_now:
                self._release()

    def close(self) -> None:
        with self._lock:
            if self._ptr is None or self._closing:
                return
            self._closing = True
            free_now = self._users == 0
        if free_now:
            self._release()

    def _release(self) -> None:
        with self._lock:
            ptr, self._ptr = self._ptr, None
        if ptr is not None:
            self._free(ptr)


# --- data ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    """Facts about a loaded model (``dgpt_model_info``)."""

    vocab_size: int
    n_positions: int
    n_layer: int
    n_embd: int
    eos_id: int
    mask_id: int
    #: None when the model has no pad id.
    pad_id: Optional[int]
    n_params: int
    has_tokenizer: bool


@dataclass(frozen=True)
class Stats:
    """Generation statistics (``dgpt_stats``)."""

    #: EoS-first: the answer length predicted at step 1; None if none was predicted.
    predicted_len: Optional[int]
    #: Tokens before the first end id.
    final_len: int
    #: Canvas length requested.
    canvas_len: int
    #: Canvas length at the end (after cuts and growth).
    final_canvas_len: int
    steps: int
    forward_passes: int
    #: Sum of positions over all forward passes.
    positions_processed: int
    grow_events: int
    #: Stopped by ``on_step`` or ``should_abort``.
    cancelled: bool
    elapsed_s: float


@dataclass(frozen=True)
class Result:
    """The outcome of a generation."""

    text: str
    tokens: List[int]
    stats: Stats


# --- model ---------------------------------------------------------------------------------------


class Model:
    """A loaded DiffuGPT model. Create with :meth:`Model.load`; thread-safe (immutable).

    Use as a context manager or call :meth:`close`; sessions created from it stay valid after
    the model is closed.
    """

    _h: Optional[_Handle] = None
    _lib: Library
    _path: str
    _info: ModelInfo

    def __init__(self) -> None:  # pragma: no cover - guarded
        raise TypeError("use Model.load(path, ...) to create a Model")

    @classmethod
    def load(
        cls,
        path: PathLike,
        *,
        tokenizer: Optional[PathLike] = None,
        eos_id: Optional[int] = None,
        mask_id: Optional[int] = None,
        pad_id: Optional[int] = None,
        check_finite: bool = False,
        n_threads: int = 0,
        dtype: str = "f32",
        progress: Optional[ProgressCallback] = None,
        lib_path: Optional[PathLike] = None,
    ) -> "Model":
        """Loads ``model.safetensors`` or a directory holding it (+ config.json, tokenizer.json).

        ``tokenizer``: a tokenizer.json path (default: the one next to the weights).
        ``eos_id`` / ``mask_id``: overrides of the detected ids (None keeps them).
        ``pad_id``: None or -1 keeps the model's, -2 removes it, >= 0 sets it.
        ``n_threads``: compute threads, 0 = all cores (process-wide, first use wins).
        ``dtype``: how the CPU keeps the projection and head weights: ``"f32"``, ``"bf16"`` (half
        the memory) or ``"int8"`` (0.29x; widths in multiples of 32); the arithmetic stays f32.
        bf16 and int8 need a CPU with AVX2 or AVX-512 (else a CONFIG error).
        ``progress(fraction)`` is called during loading; an exception raised in it is re-raised
        here after the load.
        """
        lib = load_library(lib_path)
        c_path = _path(path, "path")
        params = lib.dgpt_model_default_params()
        i64 = (-(2**63), 2**63 - 1)
        params.eos_id = -1 if eos_id is None else _int_in(eos_id, "eos_id", *i64)
        params.mask_id = -1 if mask_id is None else _int_in(mask_id, "mask_id", *i64)
        params.pad_id = -1 if pad_id is None else _int_in(pad_id, "pad_id", *i64)
        params.check_finite = _bool(check_finite, "check_finite")
        params.n_threads = _int_in(n_threads, "n_threads", 0, 2**32 - 1)
        dtypes = {"f32": 0, "bf16": 1, "int8": 2}
        if not isinstance(dtype, str) or dtype not in dtypes:
            raise ValueError(f"dtype must be one of {sorted(dtypes)}, not {dtype!r}")
        params.dtype = dtypes[dtype]
        tok = None
        if tokenizer is not None:
            tok = _path(tokenizer, "tokenizer")
            params.tokenizer_path = tok
        errors: List[BaseException] = []
        progress_cb = None
        if progress is not None:
            if not callable(progress):
                raise TypeError("progress must be callable")

            def _progress(fraction: float, _ud: Any) -> bool:
                if errors:
                    return False
                try:
                    r = progress(float(fraction))
                    return True if r is None else bool(r)
                except BaseException as e:  # never let it cross the C boundary
                    errors.append(e)
                    return False

            progress_cb = _lib.dgpt_progress_callback(_progress)
            params.progress_callback = progress_cb
        out = _lib.dgpt_model_p()
        st = lib.dgpt_model_load(c_path, byref(params), byref(out))
        err = lib.error(st) if st != Status.OK else None
        del progress_cb, tok  # kept alive until here
        if err is not None:
            if errors:
                raise errors[0]
            raise err
        if errors:
            lib.dgpt_model_free(out)
            raise errors[0]
        assert out.value is not None  # written on success
        self = cls.__new__(cls)
        self._lib = lib
        self._path = os.fspath(path)
        self._h = _Handle(out.value, lib.dgpt_model_free, "model")
        try:
            info = _lib.dgpt_model_info()
            with self._h.use() as ptr:
                lib.check(lib.dgpt_model_get_info(ptr, byref(info)))
        except BaseException:
            self.close()
            raise
        self._info = ModelInfo(
            vocab_size=info.vocab_size,
            n_positions=info.n_positions,
            n_layer=info.n_layer,
            n_embd=info.n_embd,
            eos_id=info.eos_id,
            mask_id=info.mask_id,
            pad_id=None if info.pad_id < 0 else info.pad_id,
            n_params=info.n_params,
            has_tokenizer=bool(info.has_tokenizer),
        )
        return self

    # lifecycle

    def close(self) -> None:
        """Frees the model (idempotent). Open sessions keep working."""
        if self._h is not None:
            self._h.close()

    @property
    def closed(self) -> bool:
        return self._h is None or self._h.closed

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self._info.n_params} params"
        return f"<diffugpt.Model {self._path!r} {state}>"

    # facts

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def path(self) -> str:
        return self._path

    @property
    def lib_version(self) -> str:
        return self._lib.version

    @property
    def lib_path(self) -> str:
        return self._lib.path

    # tokenizer

    def tokenize(self, text: str) -> List[int]:
        """Token ids of ``text`` (needs a tokenizer)."""
        b = _c_string(text, "text")
        lib = self._lib
        assert self._h is not None
        with self._h.use() as ptr:
            n = lib.dgpt_tokenize(ptr, b, None, 0)
            while True:
                if n == INT32_MIN:
                    raise lib.error(Status(lib.dgpt_last_status()))
                if n >= 0:
                    return []  # only reached with cap 0: nothing to write
                need = -n
                buf = (c_uint32 * need)()
                n = lib.dgpt_tokenize(ptr, b, buf, need)
                if n >= 0:
                    return list(buf[:n])

    def detokenize(self, ids: Iterable[int]) -> str:
        """Text of token ids (needs a tokenizer; special tokens are kept)."""
        arr, n_ids = _u32_array(ids, "token")
        vocab = self._info.vocab_size
        for t in arr:
            if t >= vocab:
                raise DiffuGPTError(Status.PROMPT, f"token id {t} is outside the vocabulary")
        lib = self._lib
        assert self._h is not None
        with self._h.use() as ptr:
            n = lib.dgpt_detokenize(ptr, arr, n_ids, None, 0)
            while True:
                if n == INT32_MIN:
                    raise lib.error(Status(lib.dgpt_last_status()))
                if n >= 0:  # pragma: no cover - cap 0 always needs room for the NUL
                    return ""
                need = -n
                buf = create_string_buffer(need)
                n = lib.dgpt_detokenize(ptr, arr, n_ids, buf, need)
                if n >= 0:
                    return buf.raw[:n].decode("utf-8", "replace")

    # generation

    def session(self) -> "Session":
        """A new session (per-request state; one thread at a time)."""
        return Session._create(self)

    def generate(
        self,
        prompt: Union[str, Sequence[int]],
        *,
        canvas_len: Optional[int] = None,
        steps: Optional[int] = None,
        steps_per_token: Optional[float] = None,
        strategy: Union[StrategyName, int, None] = None,
        temperature: Optional[float] = None,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        repetition_penalty: Optional[float] = None,
        seed: Optional[int] = None,
        length_mode: Union[LengthModeName, int, None] = None,
        predictor: Union[PredictorName, int, None] = None,
        predictor_value: Optional[float] = None,
        oracle_len: Optional[int] = None,
        margin: Optional[int] = None,
        margin_ratio: Optional[float] = None,
        grow: Optional[bool] = None,
        ban_mask: Optional[bool] = None,
        arm: Optional[bool] = None,
        memory_limit_bytes: Optional[int] = None,
        end_floor: Optional[float] = None,
        on_step: Optional[StepCallback] = None,
        should_abort: Optional[AbortCallback] = None,
    ) -> Result:
        """Generates with a temporary session; see :meth:`Session.generate`."""
        with self.session() as s:
            return s._generate(
                prompt,
                dict(
                    canvas_len=canvas_len,
                    steps=steps,
                    steps_per_token=steps_per_token,
                    strategy=strategy,
                    temperature=temperature,
                    top_k=top_k,
                    top_p=top_p,
                    repetition_penalty=repetition_penalty,
                    seed=seed,
                    length_mode=length_mode,
                    predictor=predictor,
                    predictor_value=predictor_value,
                    oracle_len=oracle_len,
                    margin=margin,
                    margin_ratio=margin_ratio,
                    grow=grow,
                    ban_mask=ban_mask,
                    arm=arm,
                    memory_limit_bytes=memory_limit_bytes,
                    end_floor=end_floor,
                ),
                on_step,
                should_abort,
            )


# --- session -------------------------------------------------------------------------------------


class Session:
    """Per-request state on a model. Use from one thread at a time (one session per thread)."""

    _h: Optional[_Handle] = None
    _lib: Library
    _model: Model

    def __init__(self) -> None:  # pragma: no cover - guarded
        raise TypeError("use model.session() to create a Session")

    @classmethod
    def _create(cls, model: Model) -> "Session":
        lib = model._lib
        out = _lib.dgpt_session_p()
        assert model._h is not None
        with model._h.use() as ptr:
            lib.check(lib.dgpt_session_new(ptr, byref(out)))
        assert out.value is not None  # written on success
        self = cls.__new__(cls)
        self._lib = lib
        self._model = model
        self._h = _Handle(out.value, lib.dgpt_session_free, "session")
        return self

    @property
    def model(self) -> Model:
        return self._model

    def close(self) -> None:
        """Frees the session (idempotent)."""
        if self._h is not None:
            self._h.close()

    @property
    def closed(self) -> bool:
        return self._h is None or self._h.closed

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<diffugpt.Session {'closed' if self.closed else 'open'}>"

    def generate(
        self,
        prompt: Union[str, Sequence[int]],
        *,
        canvas_len: Optional[int] = None,
        steps: Optional[int] = None,
        steps_per_token: Optional[float] = None,
        strategy: Union[StrategyName, int, None] = None,
        temperature: Optional[float] = None,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        repetition_penalty: Optional[float] = None,
        seed: Optional[int] = None,
        length_mode: Union[LengthModeName, int, None] = None,
        predictor: Union[PredictorName, int, None] = None,
        predictor_value: Optional[float] = None,
        oracle_len: Optional[int] = None,
        margin: Optional[int] = None,
        margin_ratio: Optional[float] = None,
        grow: Optional[bool] = None,
        ban_mask: Optional[bool] = None,
        arm: Optional[bool] = None,
        memory_limit_bytes: Optional[int] = None,
        end_floor: Optional[float] = None,
        on_step: Optional[StepCallback] = None,
        should_abort: Optional[AbortCallback] = None,
    ) -> Result:
        """Generates an answer to ``prompt`` (text, or token ids; ``[]`` is unconditional).

        Every parameter left as None keeps the library default (``dgpt_generate_default_params``:
        canvas 64, one step per token, confidence unmasking, greedy, EoS-first with the
        quantile-0.9 predictor, margin max(8, 25%), growth on, mask banned). Names and meanings
        are those of the C struct ``dgpt_generate_params``; ``strategy``, ``length_mode`` and
        ``predictor`` also take names.

        ``on_step(step, total_steps, canvas)`` runs after each step with a copy of the canvas
        (answer slots; masked slots hold ``info.mask_id``); returning False stops and returns
        the partial result with ``stats.cancelled``. ``should_abort()`` is polled before each
        step; True before the first step raises :class:`DiffuGPTError` with status ABORTED,
        later it stops like ``on_step``. An exception raised in a callback stops the generation
        and is re-raised here.
        """
        return self._generate(
            prompt,
            dict(
                canvas_len=canvas_len,
                steps=steps,
                steps_per_token=steps_per_token,
                strategy=strategy,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                repetition_penalty=repetition_penalty,
                seed=seed,
                length_mode=length_mode,
                predictor=predictor,
                predictor_value=predictor_value,
                oracle_len=oracle_len,
                margin=margin,
                margin_ratio=margin_ratio,
                grow=grow,
                ban_mask=ban_mask,
                arm=arm,
                memory_limit_bytes=memory_limit_bytes,
                end_floor=end_floor,
            ),
            on_step,
            should_abort,
        )

    def _generate(
        self,
        prompt: Union[str, Sequence[int]],
        opts: Dict[str, Any],
        on_step: Optional[StepCallback],
        should_abort: Optional[AbortCallback],
    ) -> Result:
        lib = self._lib
        params = lib.dgpt_generate_default_params()
        for name, value in opts.items():
            if value is None:
                continue
            if name in _ENUMS:
                setattr(params, name, _enum(value, name))
            elif name in _UINT32:
                setattr(params, name, _int_in(value, name, 0, 2**32 - 1))
            elif name in _UINT64:
                setattr(params, name, _int_in(value, name, 0, 2**64 - 1))
            elif name in _FLOAT:
                f = _float(value, name)
                if math.isfinite(f) and abs(f) > 3.4e38:
                    raise ValueError(f"{name} {f} does not fit a float")
                setattr(params, name, f)
            elif name in _BOOL:
                setattr(params, name, _bool(value, name))
            else:  # pragma: no cover - the signature lists every name
                raise TypeError(f"unexpected keyword argument {name!r}")

        if isinstance(prompt, str):
            text: Optional[bytes] = _c_string(prompt, "prompt")
            arr, n_ids = None, 0
        else:
            text = None
            arr, n_ids = _u32_array(prompt, "prompt")

        errors: List[BaseException] = []
        step_cb = abort_cb = None
        if on_step is not None:
            if not callable(on_step):
                raise TypeError("on_step must be callable")

            def _step(step: int, total: int, canvas: Any, n: int, _ud: Any) -> bool:
                if errors:
                    return False
                try:
                    r = on_step(step, total, canvas[:n])
                    return True if r is None else bool(r)
                except BaseException as e:  # never let it cross the C boundary
                    errors.append(e)
                    return False

            step_cb = _lib.dgpt_step_callback(_step)
            params.step_callback = step_cb
        if should_abort is not None:
            if not callable(should_abort):
                raise TypeError("should_abort must be callable")

            def _abort(_ud: Any) -> bool:
                if errors:
                    return True
                try:
                    return bool(should_abort())
                except BaseException as e:
                    errors.append(e)
                    return True

            abort_cb = _lib.dgpt_abort_callback(_abort)
            params.abort_callback = abort_cb

        out = _lib.dgpt_result_p()
        assert self._h is not None
        with self._h.use(exclusive=True) as ptr:
            if text is not None:
                st = lib.dgpt_generate(ptr, text, byref(params), byref(out))
            else:
                st = lib.dgpt_generate_tokens(ptr, arr, n_ids, byref(params), byref(out))
            err = lib.error(st) if st != Status.OK else None  # same thread, right after
        del step_cb, abort_cb  # the callbacks were kept alive through the call

        if err is not None:
            if errors:
                raise errors[0]
            raise err
        try:
            if errors:
                raise errors[0]
            # By length, not up to the first NUL: a generated NUL token is part of the text.
            raw = lib.dgpt_result_text(out)
            n_bytes = lib.dgpt_result_text_len(out)
            result_text = string_at(raw, n_bytes).decode("utf-8", "replace") if raw else ""
            n = c_size_t(0)
            p = lib.dgpt_result_tokens(out, byref(n))
            tokens = list(p[: n.value]) if n.value else []
            s = _lib.dgpt_stats()
            lib.check(lib.dgpt_result_stats(out, byref(s)))
        finally:
            lib.dgpt_result_free(out)
        return Result(
            text=result_text,
            tokens=tokens,
            stats=Stats(
                predicted_len=None if s.predicted_len < 0 else s.predicted_len,
                final_len=s.final_len,
                canvas_len=s.canvas_len,
                final_canvas_len=s.final_canvas_len,
                steps=s.steps,
                forward_passes=s.forward_passes,
                positions_processed=s.positions_processed,
                grow_events=s.grow_events,
                cancelled=bool(s.cancelled),
                elapsed_s=s.elapsed_s,
            ),
        )
