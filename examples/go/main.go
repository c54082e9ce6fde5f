// Generate with the built-in default model through the Go binding, fixed-length and EoS-first
// side by side. From the repository root, after `cargo build --release`:
//
//	cd examples/go && PKG_CONFIG_PATH=../../target/release LD_LIBRARY_PATH=../../target/release \
//	  go run . [MODEL_DIR] [PROMPT]
package main

import (
	"fmt"
	"log"
	"os"
	"path/filepath"
	"runtime"

	diffugpt "github.com/diffugpt/diffugpt/bindings/go"
)

func main() {
	_, file, _, _ := runtime.Caller(0)
	modelDir := filepath.Join(filepath.Dir(file), "..", "..", "models", "default")
	prompt := `Lantern \Lan"tern\, n.`
	if len(os.Args) > 1 {
		modelDir = os.Args[1]
	}
	if len(os.Args) > 2 {
		prompt = os.Args[2]
	}
	m, err := diffugpt.LoadModel(modelDir, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()
	s, err := m.NewSession()
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	for _, mode := range []diffugpt.LengthMode{diffugpt.LengthFixed, diffugpt.LengthEosFirst} {
		name := map[diffugpt.LengthMode]string{diffugpt.LengthFixed: "fixed", diffugpt.LengthEosFirst: "eos-first"}[mode]
		p := diffugpt.DefaultGenerateParams()
		p.CanvasLen = 128
		p.LengthMode = mode
		r, err := s.Generate(prompt, p)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("--- %s: %d tokens, predicted %d, %d forward passes\n%s%s\n",
			name, r.Stats.FinalLen, r.Stats.PredictedLen, r.Stats.ForwardPasses, prompt, r.Text)
	}
}
