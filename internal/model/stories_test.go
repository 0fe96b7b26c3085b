package model

import (
	"math"
	"path/filepath"
	"testing"

	"github.com/loractl/loractl/internal/backend/cpu"
	"github.com/loractl/loractl/internal/refdata"
)

type logitsRef struct {
	Name   string      `json:"name"`
	Tokens []int       `json:"tokens"`
	Logits [][]float32 `json:"logits"`
}

type greedyRef struct {
	Prompt       string `json:"prompt"`
	PromptIDs    []int  `json:"prompt_ids"`
	GeneratedIDs []int  `json:"generated_ids"`
}

func loadStories(tb testing.TB) *Model {
	tb.Helper()
	m, err := Load(refdata.Stories260K(tb), cpu.New())
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

// maxAbsDiff returns max|got-want| and max|want|.
func maxAbsDiff(got, want []float32) (diff, ref float64) {
	for i := range want {
		diff = max(diff, math.Abs(float64(got[i])-float64(want[i])))
		ref = max(ref, math.Abs(float64(want[i])))
	}
	return diff, ref
}

func TestStoriesConfig(t *testing.T) {
	cfg, err := LoadConfig(refdata.Stories260K(t))
	if err != nil {
		t.Fatal(err)
	}
	// The values of stories260K/config.json.
	if cfg.ModelType != "llama" || cfg.HiddenSize != 64 || cfg.IntermediateSize != 172 || cfg.NumHiddenLayers != 5 ||
		cfg.NumAttentionHeads != 8 || cfg.NumKeyValueHeads != 4 || cfg.HeadDim != 8 || cfg.VocabSize != 512 ||
		cfg.MaxPositionEmbeddings != 512 || !cfg.TieWordEmbeddings || cfg.BOSTokenID != 1 ||
		len(cfg.EOSTokenIDs) != 1 || cfg.EOSTokenIDs[0] != 2 || cfg.RMSNormEps != 1e-5 || cfg.RopeTheta != 10000 || cfg.RopeScaling != nil {
		t.Errorf("unexpected config: %+v", cfg)
	}
	// Parameter count = the element count of the 47 tensors in model.safetensors (tied lm_head).
	m := loadStories(t)
	defer m.Close()
	var n int64
	for _, s := range m.specs() {
		n += int64((*s.dst).Len())
	}
	if got := cfg.NumParams(); got != n {
		t.Errorf("NumParams = %d, the checkpoint holds %d", got, n)
	}
	t.Logf("stories260K: %d parameters", n)
}

func TestStoriesLogits(t *testing.T) {
	refs := refdata.ReadJSONL[logitsRef](t, filepath.Join(refdata.Stories260K(t), "reference", "logits.jsonl"))
	if len(refs) != 3 {
		t.Fatalf("logits.jsonl: %d sequences, want 3", len(refs))
	}
	m := loadStories(t)
	defer m.Close()
	V := m.Config().VocabSize
	for _, ref := range refs {
		t.Run(ref.Name, func(t *testing.T) {
			T := len(ref.Tokens)
			want := make([]float32, 0, T*V) // (T, V)
			for _, row := range ref.Logits {
				want = append(want, row...)
			}
			got, err := m.ForwardAll(ref.Tokens)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != T*V || len(want) != T*V {
				t.Fatalf("got %d logits, reference %d, want %d", len(got), len(want), T*V)
			}
			diff, scale := maxAbsDiff(got, want)
			t.Logf("%s: %d positions, max|Δ| = %.3g, max|ref| = %.3g, ratio %.3g", ref.Name, T, diff, scale, diff/scale)
			if diff/scale > 1e-4 {
				for tt := 0; tt < T; tt++ {
					if d, _ := maxAbsDiff(got[tt*V:(tt+1)*V], want[tt*V:(tt+1)*V]); d/scale > 1e-4 {
						t.Fatalf("position %d (token %d): max|Δ| %.3g exceeds 1e-4·max|ref|", tt, ref.Tokens[tt], d)
					}
				}
			}

			// Incremental path: one token per Step, then a prefill chunk followed by single steps.
			for _, chunk := range []int{1, T / 2} {
				c := m.NewKVCache(T)
				var worst float64
				for t0 := 0; t0 < T; {
					n := 1
					if t0 == 0 {
						n = chunk
					}
					step, err := m.Step(c, ref.Tokens[t0:t0+n])
					if err != nil {
						t.Fatal(err)
					}
					t0 += n
					d, _ := maxAbsDiff(step, got[(t0-1)*V:t0*V])
					worst = max(worst, d)
				}
				c.Close()
				t.Logf("%s: KV-cache steps (first chunk %d) vs full forward: max|Δ| = %.3g", ref.Name, chunk, worst)
				if worst > 1e-6*scale {
					t.Errorf("KV-cache path (first chunk %d) differs from the full forward by %.3g", chunk, worst)
				}
			}
		})
	}
}

func TestStoriesGreedy(t *testing.T) {
	refs := refdata.ReadJSONL[greedyRef](t, filepath.Join(refdata.Stories260K(t), "reference", "greedy.jsonl"))
	if len(refs) != 6 {
		t.Fatalf("greedy.jsonl: %d prompts, want 6", len(refs))
	}
	m := loadStories(t)
	defer m.Close()
	for _, ref := range refs {
		t.Run(ref.Prompt, func(t *testing.T) {
			var streamed []int
			got, err := Generate(m, ref.PromptIDs, len(ref.GeneratedIDs), NewSampler(0, 0, 1, 0), nil, func(id int) error {
				streamed = append(streamed, id)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(ref.GeneratedIDs) {
				t.Fatalf("generated %d tokens, want %d", len(got), len(ref.GeneratedIDs))
			}
			for i := range got {
				if got[i] != ref.GeneratedIDs[i] {
					t.Fatalf("prompt %q: token %d: got %d, run.c %d (got %v)", ref.Prompt, i, got[i], ref.GeneratedIDs[i], got)
				}
				if streamed[i] != got[i] {
					t.Fatalf("onToken saw %d at %d, returned %d", streamed[i], i, got[i])
				}
			}
		})
	}
}

// BenchmarkGenerateStories260K times greedy generation of 200 new tokens after a BOS prompt.
func BenchmarkGenerateStories260K(b *testing.B) {
	m := loadStories(b)
	defer m.Close()
	const n = 200
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := Generate(m, []int{1}, n, NewSampler(0, 0, 1, 0), nil, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "tokens/s")
}
