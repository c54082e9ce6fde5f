// Package diffugpt is a cgo binding of the diffugpt C ABI (include/diffugpt.h): DiffuGPT
// (masked discrete-diffusion GPT-2) inference with EoS-first variable-length decoding.
//
// A *Model is immutable and may be shared by any number of goroutines. A *Session is
// per-request state: calls on one Session are serialized by an internal mutex, so give each
// goroutine its own Session for parallelism. Close both when done (Close is idempotent; a
// finalizer is only a backstop). A Session keeps its model's weights alive, so the Model may be
// closed first.
//
// Errors returned by the library are *Error values holding the Status and the message of
// dgpt_last_error. A panic in a Go callback is recovered, stops the call and is returned as a
// *PanicError.
package diffugpt

/*
#cgo pkg-config: diffugpt
#include <stdlib.h>
#include "diffugpt.h"

// The Go trampolines exported by callbacks.go (declared here: _cgo_export.h does not exist
// yet when cgo processes this preamble).
extern bool dgptGoStep(uint32_t step, uint32_t total, uint32_t *canvas, size_t canvas_len,
                       uintptr_t handle);
extern bool dgptGoAbort(uintptr_t handle);
extern bool dgptGoProgress(float progress, uintptr_t handle);

// C shims with the exact callback signatures, forwarding to the exported Go trampolines in
// callbacks.go. user_data carries a runtime/cgo.Handle (an integer, never a Go pointer).
static inline bool dgpt_go_step_shim(uint32_t step, uint32_t total, const uint32_t *canvas,
                                     size_t canvas_len, void *user_data) {
	return dgptGoStep(step, total, (uint32_t *)canvas, canvas_len, (uintptr_t)user_data);
}

static inline bool dgpt_go_abort_shim(void *user_data) {
	return dgptGoAbort((uintptr_t)user_data);
}

static inline bool dgpt_go_progress_shim(float progress, void *user_data) {
	return dgptGoProgress(progress, (uintptr_t)user_data);
}

static inline void dgpt_go_set_step(dgpt_generate_params *p, uintptr_t h) {
	p->step_callback = (dgpt_step_callback)dgpt_go_step_shim;
	p->step_user_data = (void *)h;
}

static inline void dgpt_go_set_abort(dgpt_generate_params *p, uintptr_t h) {
	p->abort_callback = (dgpt_abort_callback)dgpt_go_abort_shim;
	p->abort_user_data = (void *)h;
}

static inline void dgpt_go_set_progress(dgpt_model_params *p, uintptr_t h) {
	p->progress_callback = (dgpt_progress_callback)dgpt_go_progress_shim;
	p->progress_user_data = (void *)h;
}
*/
import "C"

import (
	"errors"
	"fmt"
	"math"
	"runtime"
	"runtime/cgo"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
	"unsafe"
)

// Version returns the version of the loaded library, e.g. "0.1.0".
func Version() string { return C.GoString(C.dgpt_version()) }

// HeaderVersion returns the version of the diffugpt.h this package was compiled against.
func HeaderVersion() string {
	return fmt.Sprintf("%d.%d.%d", C.DGPT_VERSION_MAJOR, C.DGPT_VERSION_MINOR, C.DGPT_VERSION_PATCH)
}

// Status is a dgpt_status code. Values are fixed forever; new codes are only appended.
type Status uint32

const (
	StatusOK         Status = C.DGPT_OK
	StatusNullArg    Status = C.DGPT_ERR_NULL_ARG    // a required pointer was NULL
	StatusInvalidArg Status = C.DGPT_ERR_INVALID_ARG // a parameter is out of range or unknown
	StatusUTF8       Status = C.DGPT_ERR_UTF8        // a string is not valid UTF-8
	StatusIO         Status = C.DGPT_ERR_IO          // a file could not be read or written
	StatusBadWeights Status = C.DGPT_ERR_BAD_WEIGHTS // corrupt weights or config mismatch
	StatusConfig     Status = C.DGPT_ERR_CONFIG      // invalid config.json or special ids
	StatusTokenizer  Status = C.DGPT_ERR_TOKENIZER   // tokenizer missing, malformed or incompatible
	StatusPrompt     Status = C.DGPT_ERR_PROMPT      // token ids out of range, prompt too long
	StatusMemory     Status = C.DGPT_ERR_MEMORY      // the request would exceed the memory limit
	StatusBackend    Status = C.DGPT_ERR_BACKEND     // the tensor backend failed
	StatusPanic      Status = C.DGPT_ERR_PANIC       // a bug: the library panicked
	StatusABI        Status = C.DGPT_ERR_ABI         // params struct size mismatch
	StatusAborted    Status = C.DGPT_ERR_ABORTED     // ShouldAbort stopped the call before any step
	StatusBusy       Status = C.DGPT_ERR_BUSY        // the session is running a call on another goroutine
)

// String returns the library's short description of the status.
func (s Status) String() string { return C.GoString(C.dgpt_status_str(C.uint32_t(s))) }

// Error is a failure reported by the library.
type Error struct {
	Status Status
	Msg    string // dgpt_last_error() of the failed call
}

func (e *Error) Error() string {
	if e.Msg == "" {
		return "diffugpt: " + e.Status.String()
	}
	return "diffugpt: " + e.Status.String() + ": " + e.Msg
}

// Is makes errors.Is(err, &Error{Status: s}) match any *Error with status s (a target with a
// non-empty Msg must match exactly).
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Status == e.Status && (t.Msg == "" || t.Msg == e.Msg)
}

// ErrClosed is returned by methods of a closed Model or Session.
var ErrClosed = errors.New("diffugpt: use of a closed model or session")

// lastError builds an *Error from st and this thread's dgpt_last_error(). The caller must hold
// runtime.LockOSThread since the failing call.
func lastError(st Status) error {
	return &Error{Status: st, Msg: C.GoString(C.dgpt_last_error())}
}

// callStatus runs f (one library call) and reads the last error on the same OS thread.
func callStatus(f func() C.dgpt_status) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if st := Status(f()); st != StatusOK {
		return lastError(st)
	}
	return nil
}

func noNUL(s, what string) error {
	if strings.IndexByte(s, 0) >= 0 {
		return &Error{Status: StatusInvalidArg, Msg: what + " contains a NUL byte"}
	}
	return nil
}

// ---------------------------------------------------------------------------------------------
// Model

// PadRemove as ModelOptions.PadID removes the model's pad id.
const PadRemove int64 = -2

// ID returns a pointer to v, for the *int64 fields of ModelOptions.
func ID(v int64) *int64 { return &v }

// ModelOptions are the optional parameters of LoadModel (nil means the defaults).
type ModelOptions struct {
	// Tokenizer is a tokenizer.json path; "" uses the one next to the weights.
	Tokenizer string
	// EosID and MaskID override the detected ids; nil keeps them.
	EosID, MaskID *int64
	// PadID: nil keeps the model's, PadRemove removes it, >= 0 sets it.
	PadID *int64
	// NThreads is the number of compute threads (0 = all cores); applies process-wide on first use.
	NThreads uint32
	// CheckFinite rejects weights holding NaN or Inf.
	CheckFinite bool
	// Dtype is how the CPU keeps the projection and head weights: "" or "f32", "bf16" (half the
	// memory) or "int8" (0.29x; widths in multiples of 32); the arithmetic stays f32. bf16 and
	// int8 need a CPU with AVX2 or AVX-512 (else StatusConfig).
	Dtype string
	// Progress, if set, is called with the load progress in [0, 1].
	Progress func(float32)
}

// Model holds loaded weights, tokenizer and special ids. It is safe for concurrent use.
type Model struct {
	mu    sync.RWMutex // read-held while ptr is in use; write-held by Close
	ptr   *C.dgpt_model
	vocab uint32 // vocab_size, to check ids before dgpt_detokenize
}

// Info are facts about a loaded model.
type Info struct {
	VocabSize    uint32
	NPositions   uint32
	NLayer       uint32
	NEmbd        uint32
	EosID        uint32
	MaskID       uint32
	PadID        int64 // -1 when the model has no pad id
	NParams      uint64
	HasTokenizer bool
}

// LoadModel loads a model from a model.safetensors file or a directory holding it (with
// config.json and tokenizer.json). opts may be nil.
func LoadModel(path string, opts *ModelOptions) (*Model, error) {
	if err := noNUL(path, "path"); err != nil {
		return nil, err
	}
	cp := C.dgpt_model_default_params()
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var cbs *callbacks
	if opts != nil {
		if opts.Tokenizer != "" {
			if err := noNUL(opts.Tokenizer, "tokenizer path"); err != nil {
				return nil, err
			}
			ctok := C.CString(opts.Tokenizer)
			defer C.free(unsafe.Pointer(ctok))
			cp.tokenizer_path = ctok
		}
		if opts.EosID != nil {
			cp.eos_id = C.int64_t(*opts.EosID)
		}
		if opts.MaskID != nil {
			cp.mask_id = C.int64_t(*opts.MaskID)
		}
		if opts.PadID != nil {
			cp.pad_id = C.int64_t(*opts.PadID)
		}
		cp.n_threads = C.uint32_t(opts.NThreads)
		cp.check_finite = C.bool(opts.CheckFinite)
		switch opts.Dtype {
		case "", "f32":
			cp.dtype = 0
		case "bf16":
			cp.dtype = 1
		case "int8":
			cp.dtype = 2
		default:
			return nil, &Error{Status: StatusInvalidArg, Msg: fmt.Sprintf("unknown Dtype %q (f32, bf16, int8)", opts.Dtype)}
		}
		if opts.Progress != nil {
			cbs = &callbacks{progress: opts.Progress}
			h := cgo.NewHandle(cbs)
			defer h.Delete()
			C.dgpt_go_set_progress(&cp, C.uintptr_t(h))
		}
	}
	var ptr *C.dgpt_model
	err := callStatus(func() C.dgpt_status { return C.dgpt_model_load(cpath, &cp, &ptr) })
	if perr := cbs.err(); perr != nil {
		C.dgpt_model_free(ptr) // NULL is fine
		return nil, perr
	}
	if err != nil {
		return nil, err
	}
	m := &Model{ptr: ptr}
	runtime.SetFinalizer(m, (*Model).Close)
	info, err := m.Info()
	if err != nil {
		m.Close()
		return nil, err
	}
	m.vocab = info.VocabSize
	return m, nil
}

// Close frees the model. It is idempotent; sessions created from the model stay valid.
func (m *Model) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ptr != nil {
		C.dgpt_model_free(m.ptr)
		m.ptr = nil
		runtime.SetFinalizer(m, nil)
	}
	return nil
}

// Info returns facts about the model.
func (m *Model) Info() (Info, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.ptr == nil {
		return Info{}, ErrClosed
	}
	var ci C.dgpt_model_info
	if err := callStatus(func() C.dgpt_status { return C.dgpt_model_get_info(m.ptr, &ci) }); err != nil {
		return Info{}, err
	}
	return Info{
		VocabSize:    uint32(ci.vocab_size),
		NPositions:   uint32(ci.n_positions),
		NLayer:       uint32(ci.n_layer),
		NEmbd:        uint32(ci.n_embd),
		EosID:        uint32(ci.eos_id),
		MaskID:       uint32(ci.mask_id),
		PadID:        int64(ci.pad_id),
		NParams:      uint64(ci.n_params),
		HasTokenizer: bool(ci.has_tokenizer),
	}, nil
}

// sentinelError turns the INT32_MIN error return of dgpt_tokenize/dgpt_detokenize into an
// *Error with the status dgpt_last_status() reports for this thread.
func sentinelError() error {
	return lastError(Status(C.dgpt_last_status()))
}

func clampCap(n int) int {
	if n > math.MaxInt32 {
		return math.MaxInt32
	}
	return n
}

// Tokenize encodes text into token ids.
func (m *Model) Tokenize(text string) ([]uint32, error) {
	return m.tokenize(text, clampCap(len(text)+1))
}

// tokenize starts with a buffer of guess ids and retries once with the size the library asks for.
func (m *Model) tokenize(text string, guess int) ([]uint32, error) {
	if err := noNUL(text, "text"); err != nil {
		return nil, err
	}
	if !utf8.ValidString(text) {
		return nil, &Error{Status: StatusUTF8, Msg: "text is not valid UTF-8"}
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.ptr == nil {
		return nil, ErrClosed
	}
	ctext := C.CString(text)
	defer C.free(unsafe.Pointer(ctext))
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	buf := make([]uint32, guess)
	for attempt := 0; attempt < 3; attempt++ {
		var p *C.uint32_t
		if len(buf) > 0 {
			p = (*C.uint32_t)(unsafe.Pointer(&buf[0]))
		}
		n := C.dgpt_tokenize(m.ptr, ctext, p, C.int32_t(len(buf)))
		switch {
		case n == math.MinInt32:
			return nil, sentinelError()
		case n >= 0:
			return buf[:int(n)], nil
		default:
			buf = make([]uint32, -int(n))
		}
	}
	return nil, &Error{Status: StatusTokenizer, Msg: "tokenize: required size kept changing"}
}

// Detokenize decodes token ids into text (special tokens included).
func (m *Model) Detokenize(tokens []uint32) (string, error) {
	return m.detokenize(tokens, clampCap(8*len(tokens)+16))
}

// detokenize starts with a buffer of guess bytes and retries with the size the library asks for.
func (m *Model) detokenize(tokens []uint32, guess int) (string, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.ptr == nil {
		return "", ErrClosed
	}
	for _, id := range tokens {
		if id >= m.vocab {
			return "", &Error{Status: StatusPrompt,
				Msg: fmt.Sprintf("token id %d is outside the vocabulary of %d tokens", id, m.vocab)}
		}
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var tp *C.uint32_t
	if len(tokens) > 0 {
		tp = (*C.uint32_t)(unsafe.Pointer(&tokens[0]))
	}
	buf := make([]byte, guess)
	for attempt := 0; attempt < 3; attempt++ {
		var p *C.char
		if len(buf) > 0 {
			p = (*C.char)(unsafe.Pointer(&buf[0]))
		}
		n := C.dgpt_detokenize(m.ptr, tp, C.size_t(len(tokens)), p, C.int32_t(len(buf)))
		switch {
		case n == math.MinInt32:
			return "", sentinelError()
		case n >= 0:
			return string(buf[:int(n)]), nil
		default:
			buf = make([]byte, -int(n))
		}
	}
	return "", &Error{Status: StatusTokenizer, Msg: "detokenize: required size kept changing"}
}

// ---------------------------------------------------------------------------------------------
// Session

// Session is per-request state. Its methods are serialized by a mutex; use one Session per
// goroutine for parallel generation. Callbacks must not call back into the same Session.
type Session struct {
	mu  sync.Mutex
	ptr *C.dgpt_session
}

// NewSession creates a session on the model.
func (m *Model) NewSession() (*Session, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.ptr == nil {
		return nil, ErrClosed
	}
	var ptr *C.dgpt_session
	if err := callStatus(func() C.dgpt_status { return C.dgpt_session_new(m.ptr, &ptr) }); err != nil {
		return nil, err
	}
	s := &Session{ptr: ptr}
	runtime.SetFinalizer(s, (*Session).Close)
	return s, nil
}

// Close frees the session. It is idempotent.
func (s *Session) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ptr != nil {
		C.dgpt_session_free(s.ptr)
		s.ptr = nil
		runtime.SetFinalizer(s, nil)
	}
	return nil
}

// Strategy selects which masked slots are unmasked at each step.
type Strategy uint32

const (
	StrategyRandom     Strategy = C.DGPT_STRATEGY_RANDOM
	StrategyConfidence Strategy = C.DGPT_STRATEGY_CONFIDENCE
	StrategyMargin     Strategy = C.DGPT_STRATEGY_MARGIN
	StrategyEntropy    Strategy = C.DGPT_STRATEGY_ENTROPY
)

// LengthMode is the canvas length policy.
type LengthMode uint32

const (
	LengthFixed    LengthMode = C.DGPT_LENGTH_FIXED
	LengthEosFirst LengthMode = C.DGPT_LENGTH_EOS_FIRST
)

// Predictor is the EoS-first length predictor.
type Predictor uint32

const (
	PredictorArgmax    Predictor = C.DGPT_PREDICTOR_ARGMAX
	PredictorThreshold Predictor = C.DGPT_PREDICTOR_THRESHOLD
	PredictorQuantile  Predictor = C.DGPT_PREDICTOR_QUANTILE
	PredictorOracle    Predictor = C.DGPT_PREDICTOR_ORACLE
)

// GenerateParams mirrors dgpt_generate_params. Start from DefaultGenerateParams(): the zero
// value is not valid (TopP must be in (0, 1]).
type GenerateParams struct {
	CanvasLen         uint32   // masked slots after the prompt; ARM: maximum new tokens
	Steps             uint32   // denoising steps for the full canvas; 0 = use StepsPerToken
	StepsPerToken     float32  //
	Strategy          Strategy //
	Temperature       float32  // 0 = greedy
	TopK              uint32   // 0 = off
	TopP              float32  // 1 = off; must be in (0, 1]
	RepetitionPenalty float32  // 1 = off
	Seed              uint64
	LengthMode        LengthMode
	Predictor         Predictor
	PredictorValue    float32 // tau for Threshold, q for Quantile
	OracleLen         uint32  // length for Oracle
	Margin            uint32  // extra slots kept after the predicted end
	MarginRatio       float32 // extra slots as a share of the predicted length (larger wins)
	Grow              bool    // grow the canvas back when the answer is longer than predicted
	BanMask           bool    // never produce the mask id
	MemoryLimitBytes  uint64  // refuse requests needing more working memory (0 = library default)
	EndFloor          float32 // EoS-first: no end before this quantile of the step-1 length (0 = off)
	Arm               bool    // causal (ARM) generation with a KV cache instead of diffusion

	// OnStep is called after each step with a copy of the canvas (answer slots; masked slots
	// hold the mask id). Return false to stop; the partial result is returned with
	// Stats.Cancelled set.
	OnStep func(step, total uint32, canvas []uint32) bool
	// ShouldAbort is polled before each step; true stops the generation (an *Error with
	// StatusAborted if nothing was generated yet, else a partial result with Stats.Cancelled).
	ShouldAbort func() bool
}

// DefaultGenerateParams returns the library defaults (dgpt_generate_default_params()).
func DefaultGenerateParams() GenerateParams {
	c := C.dgpt_generate_default_params()
	return GenerateParams{
		CanvasLen:         uint32(c.canvas_len),
		Steps:             uint32(c.steps),
		StepsPerToken:     float32(c.steps_per_token),
		Strategy:          Strategy(c.strategy),
		Temperature:       float32(c.temperature),
		TopK:              uint32(c.top_k),
		TopP:              float32(c.top_p),
		RepetitionPenalty: float32(c.repetition_penalty),
		Seed:              uint64(c.seed),
		LengthMode:        LengthMode(c.length_mode),
		Predictor:         Predictor(c.predictor),
		PredictorValue:    float32(c.predictor_value),
		OracleLen:         uint32(c.oracle_len),
		Margin:            uint32(c.margin),
		MarginRatio:       float32(c.margin_ratio),
		Grow:              bool(c.grow),
		BanMask:           bool(c.ban_mask),
		MemoryLimitBytes:  uint64(c.memory_limit_bytes),
		EndFloor:          float32(c.end_floor),
		Arm:               bool(c.arm),
	}
}

// toC fills the C struct, starting from the library defaults so that `size` and any field
// this binding does not know keep their default values.
func (p *GenerateParams) toC() C.dgpt_generate_params {
	c := C.dgpt_generate_default_params()
	c.canvas_len = C.uint32_t(p.CanvasLen)
	c.steps = C.uint32_t(p.Steps)
	c.steps_per_token = C.float(p.StepsPerToken)
	c.strategy = C.uint32_t(p.Strategy)
	c.temperature = C.float(p.Temperature)
	c.top_k = C.uint32_t(p.TopK)
	c.top_p = C.float(p.TopP)
	c.repetition_penalty = C.float(p.RepetitionPenalty)
	c.seed = C.uint64_t(p.Seed)
	c.length_mode = C.uint32_t(p.LengthMode)
	c.predictor = C.uint32_t(p.Predictor)
	c.predictor_value = C.float(p.PredictorValue)
	c.oracle_len = C.uint32_t(p.OracleLen)
	c.margin = C.uint32_t(p.Margin)
	c.margin_ratio = C.float(p.MarginRatio)
	c.grow = C.bool(p.Grow)
	c.ban_mask = C.bool(p.BanMask)
	c.memory_limit_bytes = C.uint64_t(p.MemoryLimitBytes)
	c.end_floor = C.float(p.EndFloor)
	c.arm = C.bool(p.Arm)
	return c
}

// Stats are generation statistics.
type Stats struct {
	PredictedLen       int64  // EoS-first: length predicted at step 1; -1 if none
	FinalLen           uint64 // tokens before the first end id (== len(Result.Tokens))
	CanvasLen          uint64 // canvas length requested
	FinalCanvasLen     uint64 // canvas length at the end (after cuts and growth)
	Steps              uint64
	ForwardPasses      uint64
	PositionsProcessed uint64 // sum of positions over all forward passes
	GrowEvents         uint64
	Cancelled          bool // stopped by OnStep or ShouldAbort
	Elapsed            time.Duration
}

// Result is the outcome of a generation.
type Result struct {
	Text   string
	Tokens []uint32 // the answer's ids, before the end
	Stats  Stats
}

// Generate generates from a text prompt (the model needs a tokenizer).
func (s *Session) Generate(prompt string, p GenerateParams) (*Result, error) {
	if err := noNUL(prompt, "prompt"); err != nil {
		return nil, err
	}
	cprompt := C.CString(prompt)
	defer C.free(unsafe.Pointer(cprompt))
	return s.run(&p, func(ptr *C.dgpt_session, cp *C.dgpt_generate_params, out **C.dgpt_result) C.dgpt_status {
		return C.dgpt_generate(ptr, cprompt, cp, out)
	})
}

// GenerateTokens generates from prompt token ids (empty for unconditional generation).
func (s *Session) GenerateTokens(prompt []uint32, p GenerateParams) (*Result, error) {
	return s.run(&p, func(ptr *C.dgpt_session, cp *C.dgpt_generate_params, out **C.dgpt_result) C.dgpt_status {
		var tp *C.uint32_t
		if len(prompt) > 0 {
			tp = (*C.uint32_t)(unsafe.Pointer(&prompt[0]))
		}
		return C.dgpt_generate_tokens(ptr, tp, C.size_t(len(prompt)), cp, out)
	})
}

type genFunc func(*C.dgpt_session, *C.dgpt_generate_params, **C.dgpt_result) C.dgpt_status

func (s *Session) run(p *GenerateParams, call genFunc) (*Result, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ptr == nil {
		return nil, ErrClosed
	}
	cp := p.toC()
	var cbs *callbacks
	if p.OnStep != nil || p.ShouldAbort != nil {
		cbs = &callbacks{onStep: p.OnStep, shouldAbort: p.ShouldAbort}
		h := cgo.NewHandle(cbs)
		defer h.Delete()
		if p.OnStep != nil {
			C.dgpt_go_set_step(&cp, C.uintptr_t(h))
		}
		if p.ShouldAbort != nil {
			C.dgpt_go_set_abort(&cp, C.uintptr_t(h))
		}
	}
	var res *C.dgpt_result
	err := callStatus(func() C.dgpt_status { return call(s.ptr, &cp, &res) })
	defer C.dgpt_result_free(res) // NULL is fine
	if perr := cbs.err(); perr != nil {
		return nil, perr
	}
	if err != nil {
		return nil, err
	}
	return copyResult(res)
}

// copyResult copies a C result into Go memory (the caller frees it).
func copyResult(res *C.dgpt_result) (*Result, error) {
	var cs C.dgpt_stats
	if err := callStatus(func() C.dgpt_status { return C.dgpt_result_stats(res, &cs) }); err != nil {
		return nil, err
	}
	var n C.size_t
	tp := C.dgpt_result_tokens(res, &n)
	toks := make([]uint32, int(n))
	if n > 0 {
		copy(toks, unsafe.Slice((*uint32)(unsafe.Pointer(tp)), int(n)))
	}
	return &Result{
		Text:   C.GoStringN(C.dgpt_result_text(res), C.int(C.dgpt_result_text_len(res))),
		Tokens: toks,
		Stats: Stats{
			PredictedLen:       int64(cs.predicted_len),
			FinalLen:           uint64(cs.final_len),
			CanvasLen:          uint64(cs.canvas_len),
			FinalCanvasLen:     uint64(cs.final_canvas_len),
			Steps:              uint64(cs.steps),
			ForwardPasses:      uint64(cs.forward_passes),
			PositionsProcessed: uint64(cs.positions_processed),
			GrowEvents:         uint64(cs.grow_events),
			Cancelled:          bool(cs.cancelled),
			Elapsed:            time.Duration(float64(cs.elapsed_s) * float64(time.Second)),
		},
	}, nil
}
