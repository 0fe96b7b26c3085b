package eval

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loractl/loractl/internal/backend/cpu"
	"github.com/loractl/loractl/internal/refdata"
	"github.com/loractl/loractl/internal/safetensors"
	"github.com/loractl/loractl/internal/synth"
)

// benchEval evaluates path on modelDir b.N times and reports the loss pass's throughput.
func benchEval(b *testing.B, modelDir, path string, seqLen int) {
	b.Helper()
	var rep *Report
	var err error
	for b.Loop() {
		if rep, err = Run(modelDir, nil, cpu.New(), Options{Data: path, SeqLen: seqLen}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(rep.Rows[0].PositionsPerSecond(), "positions/s")
	b.ReportMetric(float64(rep.Rows[0].Positions), "positions")
}

// BenchmarkEvalStories260K: the Moby Dick corpus (139 chapters, each cut to 256 positions).
func BenchmarkEvalStories260K(b *testing.B) {
	benchEval(b, refdata.Stories260K(b), refdata.Path(b, "data", "moby-dick.jsonl"), 256)
}

// BenchmarkEvalSynthetic25M: a random Llama of 25M parameters (dim 512, 8 layers, GQA 8/4,
// vocab 4096) with the synthetic character tokenizer, on 64 text records of 256 positions.
func BenchmarkEvalSynthetic25M(b *testing.B) {
	dir := b.TempDir()
	shape := synth.LlamaShape{Dim: 512, Layers: 8, Heads: 8, KVHeads: 4, Hidden: 1376, Vocab: 4096}
	ts, _, err := synth.LlamaTensors(shape, 0.02, 1)
	if err != nil {
		b.Fatal(err)
	}
	if err := safetensors.Write(filepath.Join(dir, "model.safetensors"), ts, map[string]string{"format": "pt"}); err != nil {
		b.Fatal(err)
	}
	cfg, _ := json.Marshal(shape.Config(512, 0.02))
	if err := os.WriteFile(filepath.Join(dir, "config.json"), cfg, 0o644); err != nil {
		b.Fatal(err)
	}
	if err := synth.WriteTokenizer(dir, 512); err != nil {
		b.Fatal(err)
	}
	var lines []string
	for i, s := range synth.Pretrain(synth.Train, 64*40, 7) {
		if i%40 == 0 {
			lines = append(lines, "")
		}
		lines[len(lines)-1] += s + " "
	}
	var sb strings.Builder
	for _, l := range lines {
		fmt.Fprintf(&sb, "{\"text\": %q}\n", l)
	}
	path := filepath.Join(dir, "data.jsonl")
	if err := os.WriteFile(path, []byte(sb.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	benchEval(b, dir, path, 256)
}
