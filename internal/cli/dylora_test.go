package cli

import (
	"encoding/json"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loractl/loractl/internal/lora"
	"github.com/loractl/loractl/internal/model"
)

// TestDyLoRARanks: eval --rank scores a DyLoRA adapter at each rank (the full rank equals the
// plain eval), merge --rank k gives a model whose loss is eval --rank k's, and both refuse an
// adapter that DyLoRA did not train.
func TestDyLoRARanks(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 7))
	st := stories(t)
	cfg, err := model.LoadConfig(st)
	if err != nil {
		t.Fatal(err)
	}
	mods, err := lora.Select(lora.Modules(cfg), []string{"q_proj", "v_proj", "down_proj"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	a, err := lora.New(lora.Config{R: 4, Alpha: 8, Fingerprint: lora.Fingerprint(cfg), Method: "dylora", RMin: 1}, mods, lora.InitDefault, rng)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range a.Pairs {
		for i := range p.B {
			p.B[i] = float32(0.1 * rng.NormFloat64())
		}
	}
	tmp := t.TempDir()
	dy := filepath.Join(tmp, "dylora")
	if err := a.Save(dy); err != nil {
		t.Fatal(err)
	}
	pc := evalData(t, rng, "pc", 10)

	loss := func(args ...string) map[int]float64 {
		t.Helper()
		code, js, stderr := run(t, "", append([]string{"eval", "--data", pc, "--metrics", "loss", "--json"}, args...)...)
		if code != 0 {
			t.Fatalf("eval %v: exit %d: %s", args, code, stderr)
		}
		var doc struct {
			Rows []struct {
				Adapter string   `json:"adapter"`
				Rank    int      `json:"rank"`
				Loss    *float64 `json:"loss"`
			} `json:"rows"`
		}
		if err := json.Unmarshal([]byte(js), &doc); err != nil {
			t.Fatalf("eval %v: %v\n%s", args, err, js)
		}
		out := map[int]float64{}
		for _, r := range doc.Rows {
			k := r.Rank
			if r.Adapter == "" {
				k = -1 // the base
			}
			out[k] = *r.Loss
		}
		return out
	}
	ranks := loss("--model", st, "--adapter", dy, "--rank", "1,2,4")
	plain := loss("--model", st, "--adapter", dy)
	if len(ranks) != 4 || ranks[4] != plain[0] || ranks[-1] != plain[-1] {
		t.Fatalf("eval --rank 1,2,4: %v; plain eval %v", ranks, plain)
	}
	if ranks[1] == ranks[2] || ranks[2] == ranks[4] {
		t.Fatalf("truncation changed nothing: %v", ranks)
	}

	merged := filepath.Join(tmp, "merged-r2")
	if code, _, stderr := run(t, "", "merge", "--base", st, "--adapter", dy, "--rank", "2", "--out", merged, "--dtype", "f32"); code != 0 {
		t.Fatalf("merge --rank 2: exit %d: %s", code, stderr)
	}
	m := loss("--model", merged)
	if d := m[-1] - ranks[2]; d > 1e-5 || d < -1e-5 {
		t.Fatalf("merged at rank 2: loss %.6f, eval --rank 2: %.6f", m[-1], ranks[2])
	}

	plainAd := evalAdapter(t, rng)
	code, _, stderr := run(t, "", "eval", "--model", st, "--adapter", plainAd, "--data", pc, "--rank", "1")
	if code == 0 || !strings.Contains(stderr, "lora.method dylora") {
		t.Fatalf("eval --rank of a plain LoRA adapter: exit %d: %s", code, stderr)
	}
	code, _, stderr = run(t, "", "merge", "--base", st, "--adapter", plainAd, "--rank", "1", "--out", filepath.Join(tmp, "no"))
	if code == 0 || !strings.Contains(stderr, "dylora") {
		t.Fatalf("merge --rank of a plain LoRA adapter: exit %d: %s", code, stderr)
	}
}
