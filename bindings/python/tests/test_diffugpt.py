"""Tests of the diffugpt Python bindings against the tiny fixture model (random weights,
GPT-2 tokenizer)."""

import ctypes
import ctypes.util
import gc
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

import diffugpt
from diffugpt import ClosedError, DiffuGPTError, LibraryError, Model, Status
from diffugpt import _lib

EOS, MASK, VOCAB, N_POS = 50256, 10541, 50257, 256


# --- library ---------------------------------------------------------------------------------


def test_version():
    v = diffugpt.version()
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", v)
    assert tuple(int(x) for x in v.split(".")[:2]) == diffugpt.ABI_VERSION
    assert diffugpt.__version__


def test_every_header_function_is_declared():
    header = diffugpt.load_library().path  # loads; then compare against the header if present
    assert header
    h = os.path.join(os.path.dirname(__file__), "..", "..", "..", "include", "diffugpt.h")
    if not os.path.exists(h):
        pytest.skip("include/diffugpt.h not available")
    text = open(h, encoding="utf-8").read()
    declared = set(re.findall(r"\b(dgpt_[a-z_]+)\s*\(", text))
    declared -= {"dgpt_progress_callback", "dgpt_step_callback", "dgpt_abort_callback"}
    assert declared == set(_lib._SIGNATURES), declared ^ set(_lib._SIGNATURES)


def test_struct_layouts_match_library_defaults():
    lib = diffugpt.load_library()
    gp = lib.dgpt_generate_default_params()
    assert gp.size == ctypes.sizeof(_lib.dgpt_generate_params)
    # The documented defaults read back field by field prove the offsets agree.
    assert gp.canvas_len == 64
    assert gp.steps == 0
    assert gp.steps_per_token == 1.0
    assert gp.strategy == diffugpt.DGPT_STRATEGY_CONFIDENCE
    assert gp.temperature == 0.0
    assert gp.top_k == 0
    assert gp.top_p == 1.0
    assert gp.repetition_penalty == 1.0
    assert gp.seed == 0
    assert gp.length_mode == diffugpt.DGPT_LENGTH_EOS_FIRST
    assert gp.predictor == diffugpt.DGPT_PREDICTOR_QUANTILE
    assert gp.predictor_value == pytest.approx(0.9)
    assert gp.oracle_len == 0
    assert gp.margin == 8
    assert gp.margin_ratio == pytest.approx(0.25)
    assert (gp.grow, gp.ban_mask, gp.arm) == (True, True, False)
    assert not gp.step_callback and not gp.abort_callback
    assert gp.step_user_data is None and gp.abort_user_data is None

    mp = lib.dgpt_model_default_params()
    assert mp.size == ctypes.sizeof(_lib.dgpt_model_params)
    assert (mp.device, mp.n_threads, mp.dtype) == (0, 0, 0)
    assert mp.tokenizer_path is None
    assert (mp.eos_id, mp.mask_id, mp.pad_id) == (-1, -1, -1)
    assert mp.check_finite is False
    assert not mp.progress_callback and mp.progress_user_data is None


def test_status_strings():
    lib = diffugpt.load_library()
    assert lib.status_str(Status.OK) == "ok"
    assert lib.status_str(Status.ABORTED) == "aborted"
    assert lib.status_str(9999) == "unknown status"


def test_invalid_lib_path_raises_clearly(tmp_path):
    missing = tmp_path / "nope" / "libdiffugpt.so"
    with pytest.raises(LibraryError) as e:
        diffugpt.load_library(missing)
    assert str(missing) in str(e.value)
    assert isinstance(e.value, DiffuGPTError)

    not_a_lib = tmp_path / "libfake.so"
    not_a_lib.write_text("not an ELF file")
    with pytest.raises(LibraryError, match="libfake.so"):
        Model.load("unused", lib_path=not_a_lib)

    libc = ctypes.util.find_library("c")
    if libc:
        with pytest.raises(LibraryError, match="does not export dgpt_"):
            diffugpt.load_library(libc)


def test_bad_env_lib_path_raises(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFUGPT_LIB", str(tmp_path / "missing.so"))
    with pytest.raises(LibraryError, match="DIFFUGPT_LIB"):
        diffugpt.version()


# --- model -----------------------------------------------------------------------------------


def test_info(model):
    info = model.info
    assert isinstance(info, diffugpt.ModelInfo)
    assert info.vocab_size == VOCAB
    assert info.n_positions == N_POS
    assert info.n_layer == 2
    assert info.n_embd == 32
    assert info.eos_id == EOS
    assert info.mask_id == MASK
    assert info.pad_id is None
    assert info.n_params > 0
    assert info.has_tokenizer is True
    assert "Model" in repr(model)


def test_load_overrides(fixture_path):
    with Model.load(fixture_path, pad_id=7, eos_id=50256, mask_id=10541, check_finite=True) as m:
        assert m.info.pad_id == 7
        assert m.info.eos_id == EOS
    with Model.load(fixture_path, pad_id=diffugpt.PAD_REMOVE) as m:
        assert m.info.pad_id is None
    with Model.load(fixture_path, tokenizer=fixture_path / "tokenizer.json") as m:
        assert m.tokenize("Hello world") == [15496, 995]


def test_load_errors(fixture_path, tmp_path):
    with pytest.raises(DiffuGPTError) as e:
        Model.load(tmp_path / "does-not-exist")
    assert e.value.status == Status.IO
    assert "does-not-exist" in e.value.message

    with pytest.raises(DiffuGPTError) as e:
        Model.load(fixture_path, tokenizer=fixture_path / "config.json")
    assert e.value.status == Status.TOKENIZER

    with pytest.raises(DiffuGPTError) as e:
        Model.load(fixture_path, eos_id=10**8)
    assert e.value.status == Status.CONFIG

    with pytest.raises(TypeError):
        Model.load(fixture_path, bogus=1)
    with pytest.raises(TypeError):
        Model()


def test_load_progress(fixture_path):
    seen = []
    with Model.load(fixture_path, progress=seen.append):
        pass
    assert seen and all(0.0 <= p <= 1.0 for p in seen)
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0)


def test_progress_exception_propagates(fixture_path):
    class Boom(Exception):
        pass

    def progress(p):
        raise Boom(p)

    with pytest.raises(Boom):
        Model.load(fixture_path, progress=progress)


# --- tokenizer -------------------------------------------------------------------------------


def test_tokenize_roundtrip(model):
    assert model.tokenize("Hello world") == [15496, 995]
    assert model.detokenize([15496, 995]) == "Hello world"
    text = "The capital of France is Paris. ünïcödé ✓"
    assert model.detokenize(model.tokenize(text)) == text
    assert model.tokenize("") == []
    assert model.detokenize([]) == ""
    assert model.detokenize((t for t in [15496])) == "Hello"


def test_tokenize_errors(model):
    with pytest.raises(TypeError):
        model.tokenize(123)
    with pytest.raises(ValueError):
        model.tokenize("a\0b")
    with pytest.raises(DiffuGPTError) as e:
        model.detokenize([VOCAB])
    assert e.value.status == Status.PROMPT
    with pytest.raises(ValueError):
        model.detokenize([-1])
    with pytest.raises(TypeError):
        model.detokenize("Hello")


# --- generation ------------------------------------------------------------------------------


def _check_stats(r, canvas_len):
    s = r.stats
    assert isinstance(r, diffugpt.Result) and isinstance(s, diffugpt.Stats)
    assert isinstance(r.text, str)
    assert all(isinstance(t, int) and 0 <= t < VOCAB for t in r.tokens)
    assert s.final_len == len(r.tokens)
    assert s.canvas_len == canvas_len
    assert s.forward_passes >= 1
    assert s.steps >= 1
    assert s.positions_processed >= s.forward_passes
    assert s.cancelled is False
    assert s.elapsed_s >= 0.0
    assert EOS not in r.tokens and MASK not in r.tokens


def test_generate_eos_first_default(model):
    r = model.generate("Hello world", canvas_len=16)
    _check_stats(r, 16)
    assert r.text == model.detokenize(r.tokens)
    assert len(r.tokens) <= r.stats.final_canvas_len


@pytest.mark.parametrize("dtype", ["bf16", "int8"])
def test_load_in_a_weight_dtype(fixture_path, dtype):
    try:
        m = diffugpt.Model.load(fixture_path, dtype=dtype)
    except DiffuGPTError as e:  # a CPU without the AVX2 / AVX-512 kernels
        assert e.status == Status.CONFIG and "kernels" in str(e), e
        return
    try:
        r = m.generate("Hello world", canvas_len=16)
        _check_stats(r, 16)
    finally:
        m.close()


def test_unknown_weight_dtype_is_refused(fixture_path):
    with pytest.raises(ValueError, match="dtype"):
        diffugpt.Model.load(fixture_path, dtype="fp8")


def test_generate_fixed(model):
    r = model.generate("Hello world", canvas_len=12, length_mode="fixed")
    _check_stats(r, 12)
    assert r.stats.predicted_len is None
    assert r.stats.final_canvas_len == 12
    assert r.stats.grow_events == 0


def test_generate_oracle_length(model):
    r = model.generate("Hello", canvas_len=40, predictor="oracle", oracle_len=5, grow=False)
    _check_stats(r, 40)
    assert r.stats.predicted_len == 5
    assert r.stats.final_canvas_len < 40


def test_text_and_token_prompts_agree(model):
    a = model.generate("Hello world", canvas_len=10)
    b = model.generate([15496, 995], canvas_len=10)
    assert a.tokens == b.tokens and a.text == b.text


def test_unconditional(model):
    r = model.generate([], canvas_len=4, length_mode="fixed")
    _check_stats(r, 4)


def test_all_strategies_and_predictors(model):
    for strategy in ("random", "confidence", "margin", "entropy", 1):
        _check_stats(model.generate("Hi", canvas_len=6, strategy=strategy, seed=3), 6)
    for predictor, value in (("argmax", None), ("threshold", 0.5), ("quantile", 0.5)):
        r = model.generate("Hi", canvas_len=6, predictor=predictor, predictor_value=value)
        _check_stats(r, 6)
    r = model.generate(
        "Hi",
        canvas_len=6,
        steps=3,
        steps_per_token=0.5,
        temperature=0.7,
        top_k=50,
        top_p=0.9,
        repetition_penalty=1.2,
        seed=1,
        length_mode="eos-first",
        margin=2,
        margin_ratio=0.5,
        grow=True,
        ban_mask=True,
        arm=False,
    )
    _check_stats(r, 6)
    assert r.stats.steps <= 6


def test_seeded_sampling(model):
    kw = dict(canvas_len=8, temperature=1.0, length_mode="fixed", strategy="random")
    a = model.generate("Hello", seed=42, **kw)
    b = model.generate("Hello", seed=42, **kw)
    assert a.tokens == b.tokens and a.text == b.text
    others = {tuple(model.generate("Hello", seed=s, **kw).tokens) for s in range(1, 5)}
    assert len(others | {tuple(a.tokens)}) > 1


def test_greedy_is_deterministic(model):
    a = model.generate("Hello", canvas_len=8, seed=1)
    b = model.generate("Hello", canvas_len=8, seed=2)
    assert a.tokens == b.tokens


def test_session_reuse(model):
    with model.session() as s:
        a = s.generate("Hello", canvas_len=8)
        b = s.generate("Hello", canvas_len=8)
        assert a.tokens == b.tokens
        assert s.model is model


# --- callbacks -------------------------------------------------------------------------------


def test_on_step_called_once_per_step(model):
    calls = []

    def on_step(step, total, canvas):
        calls.append((step, total, list(canvas)))

    r = model.generate("Hello", canvas_len=12, length_mode="fixed", steps=4, on_step=on_step)
    assert len(calls) == r.stats.steps == 4
    assert [c[0] for c in calls] == [1, 2, 3, 4]
    assert all(c[1] == 4 for c in calls)
    assert all(len(c[2]) == 12 for c in calls)
    masked = [c[2].count(MASK) for c in calls]
    assert masked == sorted(masked, reverse=True) and masked[-1] == 0
    assert calls[-1][2][: len(r.tokens)] == r.tokens


def test_on_step_false_cancels(model):
    calls = []

    def on_step(step, total, canvas):
        calls.append(step)
        return step < 3

    r = model.generate("Hello", canvas_len=12, length_mode="fixed", on_step=on_step)
    assert calls == [1, 2, 3]
    assert r.stats.cancelled is True
    assert r.stats.steps == 3


def test_on_step_none_and_truthy_continue(model):
    r = model.generate("Hello", canvas_len=5, length_mode="fixed", on_step=lambda *a: 1)
    assert not r.stats.cancelled and r.stats.steps == 5


def test_on_step_exception_propagates(model):
    class Boom(Exception):
        pass

    calls = []

    def on_step(step, total, canvas):
        calls.append(step)
        if step == 2:
            raise Boom("from the callback")

    with pytest.raises(Boom, match="from the callback"):
        model.generate("Hello", canvas_len=12, length_mode="fixed", on_step=on_step)
    assert calls == [1, 2]
    # The session/model stay usable.
    assert model.generate("Hello", canvas_len=4).stats.final_len >= 0


def test_should_abort_before_start(model):
    with pytest.raises(DiffuGPTError) as e:
        model.generate("Hello", canvas_len=8, should_abort=lambda: True)
    assert e.value.status == Status.ABORTED
    assert e.value.message


def test_should_abort_midway_cancels(model):
    polls = []

    def should_abort():
        polls.append(1)
        return len(polls) > 3

    r = model.generate("Hello", canvas_len=12, length_mode="fixed", should_abort=should_abort)
    assert r.stats.cancelled is True
    assert 1 <= r.stats.steps < 12


def test_should_abort_exception_propagates(model):
    def should_abort():
        raise KeyError("abort check failed")

    with pytest.raises(KeyError):
        model.generate("Hello", canvas_len=8, should_abort=should_abort)


def test_callbacks_must_be_callable(model):
    with pytest.raises(TypeError):
        model.generate("Hello", on_step=5)
    with pytest.raises(TypeError):
        model.generate("Hello", should_abort="yes")


# --- bad parameters --------------------------------------------------------------------------


def test_bad_params(model):
    with pytest.raises(DiffuGPTError) as e:
        model.generate("Hello", top_p=2)
    assert e.value.status == Status.INVALID_ARG
    assert "top_p" in e.value.message

    with pytest.raises(ValueError, match="strategy"):
        model.generate("Hello", strategy="nope")
    with pytest.raises(ValueError, match="length_mode"):
        model.generate("Hello", length_mode="sometimes")
    with pytest.raises(ValueError, match="predictor"):
        model.generate("Hello", predictor="crystal-ball")

    with pytest.raises(DiffuGPTError) as e:
        model.generate("Hello", canvas_len=100000)
    assert e.value.status == Status.INVALID_ARG

    with pytest.raises(DiffuGPTError) as e:
        model.generate("Hello", strategy=99)
    assert e.value.status == Status.INVALID_ARG

    with pytest.raises(DiffuGPTError) as e:
        model.generate("Hello", end_floor=1.0)
    assert e.value.status == Status.INVALID_ARG
    assert "end floor" in e.value.message
    assert model.generate("Hello", canvas_len=4, end_floor=0.0).stats.steps >= 1

    with pytest.raises(TypeError):
        model.generate("Hello", bogus=1)
    with model.session() as s, pytest.raises(TypeError):
        s.generate("Hello", canvas_length=8)

    with pytest.raises(ValueError):
        model.generate("Hello", canvas_len=-1)
    with pytest.raises(ValueError):
        model.generate("Hello", seed=-1)
    with pytest.raises(TypeError):
        model.generate("Hello", temperature="hot")
    with pytest.raises(TypeError):
        model.generate("Hello", grow="yes")
    with pytest.raises(TypeError):
        model.generate(b"Hello")
    with pytest.raises(ValueError):
        model.generate("a\0b")

    with pytest.raises(DiffuGPTError) as e:
        model.generate([VOCAB + 5], canvas_len=4)
    assert e.value.status == Status.PROMPT

    # Errors leave the last-error text behind for the exception only; a success clears it.
    assert model.generate("Hello", canvas_len=4).stats.steps >= 1
    assert diffugpt.load_library().last_error() == ""


# --- lifecycle -------------------------------------------------------------------------------


def test_context_managers_close(fixture_path):
    with Model.load(fixture_path) as m:
        with m.session() as s:
            assert not s.closed
            s.generate("Hello", canvas_len=4)
        assert s.closed
        s.close()  # double close is safe
        with pytest.raises(ClosedError):
            s.generate("Hello")
        s2 = m.session()
    assert m.closed
    m.close()
    m.close()
    with pytest.raises(ClosedError):
        m.tokenize("Hello")
    with pytest.raises(ClosedError):
        m.session()
    with pytest.raises(ClosedError):
        m.generate("Hello")
    # A session keeps the weights alive after its model is closed.
    assert s2.generate("Hello", canvas_len=4).stats.steps >= 1
    s2.close()
    assert "closed" in repr(m) and "closed" in repr(s2)


def test_del_backstop(fixture_path):
    m = Model.load(fixture_path)
    s = m.session()
    del m
    gc.collect()
    assert s.generate("Hello", canvas_len=4).stats.steps >= 1
    del s
    gc.collect()


def test_session_is_one_call_at_a_time(model):
    with model.session() as s:
        inner = []

        def on_step(step, total, canvas):
            with pytest.raises(RuntimeError, match="in use"):
                s.generate("Hello", canvas_len=2)
            s.close()  # deferred: not freed under the running call
            assert s.closed
            inner.append(step)
            return False

        r = s.generate("Hello", canvas_len=4, on_step=on_step)
        assert inner == [1] and r.stats.cancelled
        assert s.closed
        with pytest.raises(ClosedError):
            s.generate("Hello", canvas_len=2)


# --- ARM ---------------------------------------------------------------------------------------


def test_arm(model):
    steps = []
    r = model.generate(
        "Hello", arm=True, canvas_len=6, on_step=lambda s, t, c: steps.append((s, len(c)))
    )
    _check_stats(r, 6)
    assert len(r.tokens) <= 6
    assert steps == [(i, i) for i in range(1, r.stats.steps + 1)]
    assert r.stats.forward_passes == r.stats.steps
    a = model.generate("Hello", arm=True, canvas_len=6, temperature=1.0, seed=9)
    b = model.generate("Hello", arm=True, canvas_len=6, temperature=1.0, seed=9)
    assert a.tokens == b.tokens


# --- threads -----------------------------------------------------------------------------------


def test_threads_match_serial(model):
    jobs = [
        dict(prompt="Hello world", canvas_len=12, temperature=1.0, seed=s, strategy="random")
        for s in range(8)
    ] + [dict(prompt="The capital of France is", canvas_len=10, arm=True)]

    def run(job):
        job = dict(job)
        prompt = job.pop("prompt")
        with model.session() as s:
            return s.generate(prompt, **job).tokens

    serial = [run(j) for j in jobs]
    barrier = threading.Barrier(4)

    def worker(i):
        barrier.wait()
        with model.session() as s:
            out = []
            for j in jobs:
                j = dict(j)
                prompt = j.pop("prompt")
                out.append(s.generate(prompt, on_step=lambda *a: None, **j).tokens)
            return out

    with ThreadPoolExecutor(4) as ex:
        results = list(ex.map(worker, range(4)))
    for res in results:
        assert res == serial


def test_memory_limit_refuses_with_status(model):
    with pytest.raises(diffugpt.DiffuGPTError) as e:
        model.generate("Hello", canvas_len=8, memory_limit_bytes=100)
    assert e.value.status == diffugpt.Status.MEMORY


@pytest.mark.skipif(
    os.environ.get("DIFFUGPT_EXPECT_BUNDLED") != "1",
    reason="only when installed by run_tests.sh (pip install, no DIFFUGPT_LIB)",
)
def test_pip_install_bundles_the_library(fixture_path):
    # run_tests.sh installs with `pip install ./bindings/python` and unsets DIFFUGPT_LIB: the
    # library must be the copy inside the installed package, not one found elsewhere.
    assert "DIFFUGPT_LIB" not in os.environ
    pkg = os.path.dirname(os.path.abspath(diffugpt.__file__))
    lib = diffugpt.load_library()
    assert os.path.dirname(os.path.abspath(lib.path)) == pkg, lib.path
    assert "site-packages" in pkg, pkg
    with diffugpt.Model.load(fixture_path) as m:
        assert isinstance(m.generate("Hello", canvas_len=4).text, str)
