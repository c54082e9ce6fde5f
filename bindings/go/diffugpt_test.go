package diffugpt

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// fixturePath is ../../tests/fixtures/tiny-diffugpt relative to this file: a 2-layer model
// with random weights and the GPT-2 tokenizer.
func fixturePath(t testing.TB) string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("runtime.Caller failed")
	}
	return filepath.Join(filepath.Dir(file), "..", "..", "tests", "fixtures", "tiny-diffugpt")
}

var (
	sharedOnce  sync.Once
	sharedModel *Model
	sharedErr   error
)

// model returns a Model shared by the tests (closed in TestMain).
func model(t testing.TB) *Model {
	t.Helper()
	sharedOnce.Do(func() { sharedModel, sharedErr = LoadModel(fixturePath(t), nil) })
	if sharedErr != nil {
		t.Fatalf("LoadModel: %v", sharedErr)
	}
	return sharedModel
}

func TestMain(m *testing.M) {
	code := m.Run()
	if sharedModel != nil {
		sharedModel.Close()
	}
	os.Exit(code)
}

func session(t testing.TB) *Session {
	t.Helper()
	s, err := model(t).NewSession()
	if err != nil {
		t.Fatalf("NewSession: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// smallParams: a 16-slot canvas, 8 steps, top-k sampling.
func smallParams() GenerateParams {
	p := DefaultGenerateParams()
	p.CanvasLen = 16
	p.Steps = 8
	p.Temperature = 1
	p.TopK = 40
	return p
}

func wantStatus(t *testing.T, err error, st Status) {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("want *Error with status %v, got %T %v", st, err, err)
	}
	if e.Status != st {
		t.Fatalf("want status %d (%v), got %d (%v): %v", st, st, e.Status, e.Status, err)
	}
	if !errors.Is(err, &Error{Status: st}) {
		t.Fatalf("errors.Is(err, &Error{Status: %v}) is false", st)
	}
}

func checkStats(t *testing.T, r *Result, canvas uint64) {
	t.Helper()
	st := r.Stats
	if st.FinalLen != uint64(len(r.Tokens)) {
		t.Errorf("FinalLen %d != len(Tokens) %d", st.FinalLen, len(r.Tokens))
	}
	if st.CanvasLen != canvas {
		t.Errorf("CanvasLen %d, want %d", st.CanvasLen, canvas)
	}
	if st.FinalLen > st.FinalCanvasLen {
		t.Errorf("FinalLen %d > FinalCanvasLen %d", st.FinalLen, st.FinalCanvasLen)
	}
	if st.Steps == 0 || st.ForwardPasses == 0 || st.PositionsProcessed == 0 {
		t.Errorf("no work recorded: %+v", st)
	}
	if st.Elapsed < 0 {
		t.Errorf("negative Elapsed %v", st.Elapsed)
	}
	for _, id := range r.Tokens {
		if id >= 50257 {
			t.Errorf("token %d outside the vocabulary", id)
		}
	}
}

func TestVersion(t *testing.T) {
	v := Version()
	if !regexp.MustCompile(`^\d+\.\d+\.\d+`).MatchString(v) {
		t.Fatalf("Version() = %q", v)
	}
	if v != HeaderVersion() {
		t.Fatalf("library %q != header %q", v, HeaderVersion())
	}
	if StatusOK.String() != "ok" || StatusUTF8.String() != "invalid UTF-8" || Status(9999).String() != "unknown status" {
		t.Fatalf("status strings: %q %q %q", StatusOK, StatusUTF8, Status(9999))
	}
	if StatusAborted != 13 || StatusInvalidArg != 2 || StatusIO != 4 {
		t.Fatal("status values changed")
	}
}

func TestLoadAndInfo(t *testing.T) {
	info, err := model(t).Info()
	if err != nil {
		t.Fatal(err)
	}
	want := Info{VocabSize: 50257, NPositions: 256, NLayer: 2, NEmbd: 32, EosID: 50256, MaskID: 10541,
		PadID: -1, NParams: info.NParams, HasTokenizer: true}
	if info != want || info.NParams == 0 {
		t.Fatalf("Info() = %+v, want %+v", info, want)
	}
}

func TestLoadOptions(t *testing.T) {
	dir := fixturePath(t)
	var progress []float32
	m, err := LoadModel(dir, &ModelOptions{
		Tokenizer:   filepath.Join(dir, "tokenizer.json"),
		EosID:       ID(50256),
		MaskID:      ID(10541),
		PadID:       ID(0),
		CheckFinite: true,
		Progress:    func(p float32) { progress = append(progress, p) },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	info, err := m.Info()
	if err != nil {
		t.Fatal(err)
	}
	if info.PadID != 0 || info.EosID != 50256 || info.MaskID != 10541 {
		t.Fatalf("overrides not applied: %+v", info)
	}
	if len(progress) == 0 {
		t.Fatal("Progress was never called")
	}
	for i, p := range progress {
		if p < 0 || p > 1 || (i > 0 && p < progress[i-1]) {
			t.Fatalf("bad progress sequence %v", progress)
		}
	}
	if last := progress[len(progress)-1]; last != 1 {
		t.Fatalf("last progress %v, want 1", last)
	}

	// Bad override: the mask id must fit the vocabulary.
	if _, err := LoadModel(dir, &ModelOptions{MaskID: ID(1 << 20)}); err == nil {
		t.Fatal("mask id outside the vocabulary was accepted")
	} else {
		wantStatus(t, err, StatusConfig)
	}
	if _, err := LoadModel(dir, &ModelOptions{EosID: ID(-7)}); err == nil {
		t.Fatal("eos id -7 was accepted")
	} else {
		wantStatus(t, err, StatusInvalidArg)
	}
}

// Dtype: bf16 and int8 weights load and generate where the CPU has the kernels (a StatusConfig
// refusal otherwise); an unknown one is refused before the C call.
func TestLoadDtype(t *testing.T) {
	dir := fixturePath(t)
	for _, d := range []string{"bf16", "int8"} {
		m, err := LoadModel(dir, &ModelOptions{Dtype: d})
		if err != nil {
			wantStatus(t, err, StatusConfig)
			continue
		}
		s, err := m.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		r, err := s.Generate("Hello", smallParams())
		if err != nil {
			t.Fatalf("%s: %v", d, err)
		}
		checkStats(t, r, 16)
		s.Close()
		m.Close()
	}
	if _, err := LoadModel(dir, &ModelOptions{Dtype: "fp8"}); err == nil {
		t.Fatal("Dtype fp8 was accepted")
	} else {
		wantStatus(t, err, StatusInvalidArg)
	}
}

func TestLoadErrors(t *testing.T) {
	_, err := LoadModel(filepath.Join(t.TempDir(), "does-not-exist"), nil)
	wantStatus(t, err, StatusIO)
	var e *Error
	errors.As(err, &e)
	if e.Msg == "" || !strings.Contains(err.Error(), e.Msg) {
		t.Fatalf("error message missing: %q", err)
	}
	_, err = LoadModel("bad\x00path", nil)
	wantStatus(t, err, StatusInvalidArg)
	_, err = LoadModel(fixturePath(t), &ModelOptions{Tokenizer: filepath.Join(t.TempDir(), "nope.json")})
	wantStatus(t, err, StatusIO)
}

func TestProgressPanic(t *testing.T) {
	m, err := LoadModel(fixturePath(t), &ModelOptions{Progress: func(float32) { panic("boom") }})
	var pe *PanicError
	if !errors.As(err, &pe) || pe.Value != "boom" || m != nil {
		t.Fatalf("want PanicError(boom) and no model, got %v, %v", m, err)
	}
}

func TestTokenizeRoundTrip(t *testing.T) {
	m := model(t)
	ids, err := m.Tokenize("Hello world")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(ids, []uint32{15496, 995}) {
		t.Fatalf("Tokenize = %v", ids)
	}
	text, err := m.Detokenize(ids)
	if err != nil || text != "Hello world" {
		t.Fatalf("Detokenize = %q, %v", text, err)
	}
	// Start with buffers that are too small: the negative-required-size path.
	ids2, err := m.tokenize("Hello world", 0)
	if err != nil || !reflect.DeepEqual(ids2, ids) {
		t.Fatalf("tokenize(cap 0) = %v, %v", ids2, err)
	}
	ids2, err = m.tokenize("Hello world", 1)
	if err != nil || !reflect.DeepEqual(ids2, ids) {
		t.Fatalf("tokenize(cap 1) = %v, %v", ids2, err)
	}
	for _, guess := range []int{0, 1, 11, 12} {
		text, err = m.detokenize(ids, guess)
		if err != nil || text != "Hello world" {
			t.Fatalf("detokenize(cap %d) = %q, %v", guess, text, err)
		}
	}
	long := strings.Repeat("The quick brown fox jumps over the lazy dog. ", 40) + "héllo wörld ✓"
	ids, err = m.Tokenize(long)
	if err != nil || len(ids) == 0 {
		t.Fatal(err)
	}
	if text, err = m.Detokenize(ids); err != nil || text != long {
		t.Fatalf("long round trip: %v", err)
	}
	if ids, err = m.Tokenize(""); err != nil || len(ids) != 0 {
		t.Fatalf("Tokenize(\"\") = %v, %v", ids, err)
	}
	if text, err = m.Detokenize(nil); err != nil || text != "" {
		t.Fatalf("Detokenize(nil) = %q, %v", text, err)
	}
	_, err = m.Detokenize([]uint32{15496, 60000})
	wantStatus(t, err, StatusPrompt)
	_, err = m.Tokenize("a\x00b")
	wantStatus(t, err, StatusInvalidArg)
	_, err = m.Tokenize("bad \xff utf8")
	wantStatus(t, err, StatusUTF8)
}

func TestGenerateEosFirstAndFixed(t *testing.T) {
	s := session(t)
	m := model(t)

	p := smallParams()
	if p.LengthMode != LengthEosFirst {
		t.Fatalf("default length mode %d, want EoS-first", p.LengthMode)
	}
	r, err := s.Generate("Hello", p)
	if err != nil {
		t.Fatal(err)
	}
	checkStats(t, r, 16)
	if r.Stats.Cancelled {
		t.Error("Cancelled without callbacks")
	}
	if r.Stats.PredictedLen < -1 || r.Stats.PredictedLen > 16 {
		t.Errorf("PredictedLen %d", r.Stats.PredictedLen)
	}
	if text, err := m.Detokenize(r.Tokens); err != nil || text != r.Text {
		t.Errorf("Text %q != Detokenize(Tokens) %q (%v)", r.Text, text, err)
	}

	// EoS-first with the oracle predictor, no margin and no growth: the canvas is cut to the
	// predicted length (plus the end slot) after step 1, so less work is done than in fixed mode.
	q := smallParams()
	q.Predictor, q.OracleLen, q.Margin, q.MarginRatio, q.Grow = PredictorOracle, 4, 0, 0, false
	cut, err := s.Generate("Hello", q)
	if err != nil {
		t.Fatal(err)
	}
	checkStats(t, cut, 16)
	if cut.Stats.PredictedLen != 4 || cut.Stats.FinalCanvasLen >= 16 || cut.Stats.FinalLen > 5 {
		t.Errorf("EoS-first oracle 4 did not cut the canvas: %+v", cut.Stats)
	}

	// The end floor travels to the library: out of range is refused.
	f := smallParams()
	if f.EndFloor != 0.7 {
		t.Errorf("default EndFloor %v, want 0.7", f.EndFloor)
	}
	f.EndFloor = 1
	_, err = s.Generate("Hello", f)
	wantStatus(t, err, StatusInvalidArg)

	p.LengthMode = LengthFixed
	r, err = s.Generate("Hello", p)
	if err != nil {
		t.Fatal(err)
	}
	checkStats(t, r, 16)
	if r.Stats.FinalCanvasLen != 16 || r.Stats.GrowEvents != 0 || r.Stats.PredictedLen != -1 {
		t.Errorf("fixed mode changed the canvas: %+v", r.Stats)
	}
	if cut.Stats.PositionsProcessed >= r.Stats.PositionsProcessed {
		t.Errorf("EoS-first cut processed %d positions, fixed %d", cut.Stats.PositionsProcessed,
			r.Stats.PositionsProcessed)
	}

	// Token prompts: the same prompt as text gives the same result.
	p = smallParams()
	p.Seed = 7
	byText, err := s.Generate("Hello world", p)
	if err != nil {
		t.Fatal(err)
	}
	byIDs, err := s.GenerateTokens([]uint32{15496, 995}, p)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(byText.Tokens, byIDs.Tokens) || byText.Text != byIDs.Text {
		t.Errorf("text and token prompts differ: %v vs %v", byText.Tokens, byIDs.Tokens)
	}
	// Unconditional and ARM generation.
	if r, err = s.GenerateTokens(nil, p); err != nil {
		t.Fatal(err)
	}
	checkStats(t, r, 16)
	p.Arm = true
	p.CanvasLen = 4
	if r, err = s.GenerateTokens(nil, p); err != nil {
		t.Fatal(err)
	}
	if len(r.Tokens) > 4 || r.Stats.FinalLen != uint64(len(r.Tokens)) {
		t.Errorf("ARM: %d tokens, stats %+v", len(r.Tokens), r.Stats)
	}
	// Every strategy and predictor is accepted.
	for _, st := range []Strategy{StrategyRandom, StrategyConfidence, StrategyMargin, StrategyEntropy} {
		for _, pr := range []Predictor{PredictorArgmax, PredictorThreshold, PredictorQuantile, PredictorOracle} {
			q := smallParams()
			q.Strategy, q.Predictor, q.OracleLen = st, pr, 5
			if pr == PredictorThreshold {
				q.PredictorValue = 0.5
			}
			if r, err = s.Generate("Hello", q); err != nil {
				t.Fatalf("strategy %d predictor %d: %v", st, pr, err)
			}
			checkStats(t, r, 16)
		}
	}
}

func TestDefaultParams(t *testing.T) {
	p := DefaultGenerateParams()
	if p.CanvasLen != 64 || p.StepsPerToken != 1 || p.Strategy != StrategyConfidence ||
		p.TopP != 1 || p.LengthMode != LengthEosFirst || p.Predictor != PredictorQuantile ||
		!p.Grow || !p.BanMask || p.Arm || p.OnStep != nil || p.ShouldAbort != nil {
		t.Fatalf("DefaultGenerateParams() = %+v", p)
	}
	c := p.toC()
	d := DefaultGenerateParams()
	// The struct's trailing padding (after end_floor) is whatever the C return left there:
	// compare the fields only.
	pad := regexp.MustCompile(`( \[\d+ \d+ \d+ \d+\])?\}$`)
	strip := func(s string) string { return pad.ReplaceAllString(s, "}") }
	if !reflect.DeepEqual(strip(fmt.Sprint(c)), strip(fmt.Sprint(d.toC()))) {
		t.Fatal("toC is not deterministic")
	}
}

func TestSeededReproducibility(t *testing.T) {
	s1, s2 := session(t), session(t)
	p := smallParams()
	p.Seed = 42
	a, err := s1.Generate("Once upon a time", p)
	if err != nil {
		t.Fatal(err)
	}
	b, err := s2.Generate("Once upon a time", p)
	if err != nil {
		t.Fatal(err)
	}
	c, err := s1.Generate("Once upon a time", p)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(a.Tokens, b.Tokens) || a.Text != b.Text || !reflect.DeepEqual(a.Tokens, c.Tokens) {
		t.Fatalf("same seed, different results: %v / %v / %v", a.Tokens, b.Tokens, c.Tokens)
	}
	distinct := map[string]bool{}
	for seed := uint64(0); seed < 6; seed++ {
		p.Seed = seed
		r, err := s1.Generate("Once upon a time", p)
		if err != nil {
			t.Fatal(err)
		}
		distinct[fmt.Sprint(r.Tokens)] = true
	}
	if len(distinct) < 2 {
		t.Fatal("six seeds gave identical samples")
	}
}

func TestOnStep(t *testing.T) {
	s := session(t)
	p := smallParams()
	p.LengthMode = LengthFixed
	var steps []uint32
	var totals []uint32
	var last []uint32
	p.OnStep = func(step, total uint32, canvas []uint32) bool {
		steps = append(steps, step)
		totals = append(totals, total)
		if len(canvas) == 0 {
			t.Error("empty canvas")
		}
		for _, id := range canvas {
			if id >= 50257 {
				t.Errorf("canvas id %d outside the vocabulary", id)
			}
		}
		last = canvas
		return true
	}
	r, err := s.Generate("Hello", p)
	if err != nil {
		t.Fatal(err)
	}
	checkStats(t, r, 16)
	if uint64(len(steps)) != r.Stats.Steps || r.Stats.Cancelled {
		t.Fatalf("OnStep called %d times, Stats.Steps %d, cancelled %v", len(steps), r.Stats.Steps, r.Stats.Cancelled)
	}
	for i := 1; i < len(steps); i++ {
		if steps[i] <= steps[i-1] {
			t.Fatalf("steps not increasing: %v", steps)
		}
	}
	if len(last) != 16 {
		t.Errorf("last canvas has %d slots, want 16", len(last))
	}
	for _, id := range last {
		if id == 10541 {
			t.Errorf("mask id left in the final canvas %v", last)
			break
		}
	}

	// Returning false stops the generation after that step.
	calls := 0
	p.OnStep = func(step, total uint32, canvas []uint32) bool {
		calls++
		return calls < 3
	}
	r, err = s.Generate("Hello", p)
	if err != nil {
		t.Fatal(err)
	}
	if calls != 3 || !r.Stats.Cancelled || r.Stats.Steps != 3 || r.Stats.ForwardPasses != 3 {
		t.Fatalf("calls %d, stats %+v", calls, r.Stats)
	}
	if r.Stats.FinalLen != uint64(len(r.Tokens)) {
		t.Fatalf("FinalLen %d != %d", r.Stats.FinalLen, len(r.Tokens))
	}
}

func TestShouldAbort(t *testing.T) {
	s := session(t)
	p := smallParams()
	p.ShouldAbort = func() bool { return true }
	r, err := s.Generate("Hello", p)
	if r != nil {
		t.Fatal("result returned on abort")
	}
	wantStatus(t, err, StatusAborted)

	// Aborting after some steps returns the partial result.
	polls := 0
	p.ShouldAbort = func() bool { polls++; return polls > 2 }
	r, err = s.Generate("Hello", p)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Stats.Cancelled || r.Stats.Steps == 0 || r.Stats.Steps >= 8 {
		t.Fatalf("polls %d, stats %+v", polls, r.Stats)
	}
	// The session still works.
	p.ShouldAbort = nil
	if _, err := s.Generate("Hello", p); err != nil {
		t.Fatal(err)
	}
}

func TestCallbackPanics(t *testing.T) {
	s := session(t)
	p := smallParams()
	p.OnStep = func(step, total uint32, canvas []uint32) bool { panic(fmt.Sprintf("step %d", step)) }
	r, err := s.Generate("Hello", p)
	var pe *PanicError
	if !errors.As(err, &pe) || r != nil || !strings.HasPrefix(fmt.Sprint(pe.Value), "step ") {
		t.Fatalf("OnStep panic: %v, %v", r, err)
	}
	if len(pe.Stack) == 0 || !strings.Contains(err.Error(), "panicked") {
		t.Fatalf("PanicError %q without stack", err)
	}
	p.OnStep = nil
	p.ShouldAbort = func() bool { panic(errors.New("abort boom")) }
	if _, err = s.Generate("Hello", p); !errors.As(err, &pe) {
		t.Fatalf("ShouldAbort panic: %v", err)
	}
	p.ShouldAbort = nil
	if _, err := s.Generate("Hello", p); err != nil {
		t.Fatalf("session broken after a callback panic: %v", err)
	}
}

func TestInvalidParams(t *testing.T) {
	s := session(t)
	cases := map[string]func(*GenerateParams){
		"TopP 2":           func(p *GenerateParams) { p.TopP = 2 },
		"TopP 0":           func(p *GenerateParams) { p.TopP = 0 },
		"Strategy 99":      func(p *GenerateParams) { p.Strategy = 99 },
		"CanvasLen 100000": func(p *GenerateParams) { p.CanvasLen = 100000 },
		"LengthMode 77":    func(p *GenerateParams) { p.LengthMode = 77 },
		"Predictor 9":      func(p *GenerateParams) { p.Predictor = 9 },
	}
	for name, tweak := range cases {
		t.Run(name, func(t *testing.T) {
			p := smallParams()
			tweak(&p)
			r, err := s.Generate("Hello", p)
			if r != nil {
				t.Fatal("result returned")
			}
			wantStatus(t, err, StatusInvalidArg)
			if err.(*Error).Msg == "" {
				t.Fatal("empty message")
			}
		})
	}
	_, err := s.GenerateTokens([]uint32{60000}, smallParams())
	wantStatus(t, err, StatusPrompt)
	_, err = s.Generate("a\x00b", smallParams())
	wantStatus(t, err, StatusInvalidArg)
	_, err = s.Generate("bad \xff utf8", smallParams())
	wantStatus(t, err, StatusUTF8)
}

func TestCloseTwice(t *testing.T) {
	m, err := LoadModel(fixturePath(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	s, err := m.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	// The session keeps the weights alive after the model is closed.
	if _, err := s.Generate("Hello", smallParams()); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s.Close()
	if _, err := s.Generate("Hello", smallParams()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Generate on a closed session: %v", err)
	}
	if _, err := m.Info(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Info on a closed model: %v", err)
	}
	if _, err := m.Tokenize("x"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Tokenize on a closed model: %v", err)
	}
	if _, err := m.NewSession(); !errors.Is(err, ErrClosed) {
		t.Fatalf("NewSession on a closed model: %v", err)
	}
}

func TestFinalizers(t *testing.T) {
	// Unreferenced models and sessions are freed by their finalizers without crashing.
	for i := 0; i < 3; i++ {
		m, err := LoadModel(fixturePath(t), nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := m.NewSession(); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	runtime.GC()
}

type sample struct {
	tokens []uint32
	text   string
}

func runOne(t *testing.T, m *Model, seed uint64) (sample, error) {
	s, err := m.NewSession()
	if err != nil {
		return sample{}, err
	}
	defer s.Close()
	p := smallParams()
	p.Seed = seed
	steps := 0
	p.OnStep = func(uint32, uint32, []uint32) bool { steps++; return true }
	r, err := s.Generate("Once upon a time", p)
	if err != nil {
		return sample{}, err
	}
	if uint64(steps) != r.Stats.Steps {
		return sample{}, fmt.Errorf("seed %d: %d callbacks for %d steps", seed, steps, r.Stats.Steps)
	}
	return sample{r.Tokens, r.Text}, nil
}

func TestConcurrentSessions(t *testing.T) {
	m := model(t)
	const n = 8
	serial := make([]sample, n)
	for i := range serial {
		var err error
		if serial[i], err = runOne(t, m, uint64(i)); err != nil {
			t.Fatal(err)
		}
	}
	parallel := make([]sample, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			parallel[i], errs[i] = runOne(t, m, uint64(i))
		}(i)
	}
	wg.Wait()
	for i := range errs {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
	}
	if !reflect.DeepEqual(serial, parallel) {
		t.Fatalf("parallel results differ from serial:\n%v\n%v", serial, parallel)
	}
	nonEmpty := false
	for _, s := range serial {
		nonEmpty = nonEmpty || len(s.tokens) > 0
	}
	if !nonEmpty {
		t.Fatal("all samples empty")
	}
}
