package lora

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestRankPatternSaveLoad: per-module ranks and alphas are saved as PEFT's rank_pattern and
// alpha_pattern (keys PEFT matches in every version) and load back to the same pairs, scales
// and deltas; the method and DyLoRA's r_min travel in the header metadata.
func TestRankPatternSaveLoad(t *testing.T) {
	c := storiesConfig(t)
	mods := Modules(c)
	pat := map[string]int{}
	for _, m := range mods {
		if m.Name == "down_proj" || m.Layer == 4 {
			pat[m.Path] = 2 + m.Layer%3
		}
	}
	a, err := New(Config{R: 4, Alpha: 8, RankPattern: pat, Method: "dylora", RMin: 2}, mods, InitDefault, rand.New(rand.NewPCG(3, 1)))
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(4, 1))
	for _, p := range a.Pairs {
		if want, ok := pat[p.Module.Path]; ok && p.R != want || !ok && p.R != 4 {
			t.Fatalf("%s: rank %d", p.Module.Path, p.R)
		}
		if p.Module.Name == "q_proj" {
			p.Alpha = 3
		}
		for i := range p.B {
			p.B[i] = float32(rng.NormFloat64())
		}
	}
	dir := t.TempDir()
	if err := a.Save(dir); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(filepath.Join(dir, ConfigFile))
	var js map[string]any
	if err := json.Unmarshal(raw, &js); err != nil {
		t.Fatal(err)
	}
	differ := 0 // modules whose pattern rank is not the default r
	for _, r := range pat {
		if r != 4 {
			differ++
		}
	}
	rp, _ := js["rank_pattern"].(map[string]any)
	if len(rp) != differ || rp["layers.0.mlp.down_proj"] != 2.0 {
		t.Fatalf("rank_pattern %v", js["rank_pattern"])
	}
	ap, _ := js["alpha_pattern"].(map[string]any)
	if len(ap) != c.NumHiddenLayers || ap["layers.2.self_attn.q_proj"] != 3.0 {
		t.Fatalf("alpha_pattern %v", js["alpha_pattern"])
	}
	b, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if b.Config.Method != "dylora" || b.Config.RMin != 2 {
		t.Fatalf("method %q r_min %d", b.Config.Method, b.Config.RMin)
	}
	for i, p := range a.Pairs {
		q := b.Pairs[i]
		if a.RankOf(p) != b.RankOf(q) || a.AlphaOf(p) != b.AlphaOf(q) || a.ScaleOf(p) != b.ScaleOf(q) ||
			!slices.Equal(a.Delta(p), b.Delta(q)) {
			t.Fatalf("%s: rank %d/%d alpha %g/%g differ after load", p.Module.Path, a.RankOf(p), b.RankOf(q), a.AlphaOf(p), b.AlphaOf(q))
		}
	}
	// Without patterns the config has neither key (older PEFT versions see what they know).
	plain := newTestAdapter(t, c, InitDefault, 1)
	d2 := t.TempDir()
	if err := plain.Save(d2); err != nil {
		t.Fatal(err)
	}
	raw, _ = os.ReadFile(filepath.Join(d2, ConfigFile))
	if strings.Contains(string(raw), "pattern") {
		t.Fatalf("plain adapter config has a pattern: %s", raw)
	}
}

// TestPatternLookup: PEFT's matching of pattern keys against module paths.
func TestPatternLookup(t *testing.T) {
	pat := map[string]int{"down_proj": 2, "layers.1.self_attn.q_proj": 5}
	for path, want := range map[string]int{
		"model.layers.3.mlp.down_proj":       2,
		"model.layers.1.self_attn.q_proj":    5,
		"model.layers.11.self_attn.q_proj":   0,
		"model.layers.1.self_attn.q_proj_x":  0,
		"model.layers.1.mlp.xdown_proj":      0,
		"model.layers.21.self_attn.q_proj":   0,
		"model.layers.1.self_attn.k_proj":    0,
		"model.layers.10.mlp.down_proj":      2,
		"model.layers.0.self_attn.down_proj": 2,
	} {
		got, _ := patternLookup(pat, path)
		if got != want {
			t.Errorf("%s: %d, want %d", path, got, want)
		}
	}
	mods := Modules(storiesConfig(t))
	if _, err := ResolvePattern(map[string]int{"dwn_proj": 2}, mods, "lora.rank_pattern"); err == nil || !strings.Contains(err.Error(), `"dwn_proj" matches no adapted module`) {
		t.Errorf("unmatched pattern: %v", err)
	}
	got, err := ResolvePattern(map[string]int{"down_proj": 2, `layers\.[01]\.self_attn\.q_proj`: 6}, mods, "lora.rank_pattern")
	if err != nil || len(got) != 5+2 || got["model.layers.1.self_attn.q_proj"] != 6 {
		t.Errorf("ResolvePattern: %v, %v", got, err)
	}
}

// TestTruncate keeps the leading k ranks with the scale of rank k.
func TestTruncate(t *testing.T) {
	a := newTestAdapter(t, storiesConfig(t), InitDefault, 2)
	p0 := a.Pairs[0]
	for i := range p0.B {
		p0.B[i] = float32(i)
	}
	full := *p0
	if err := a.Truncate(2); err != nil {
		t.Fatal(err)
	}
	if a.RankOf(p0) != 2 || a.ScaleOf(p0) != 4 || len(p0.A) != 2*p0.Module.In || len(p0.B) != 2*p0.Module.Out {
		t.Fatalf("rank %d scale %g", a.RankOf(p0), a.ScaleOf(p0))
	}
	for o := 0; o < p0.Module.Out; o++ {
		if p0.B[o*2] != full.B[o*4] || p0.B[o*2+1] != full.B[o*4+1] {
			t.Fatalf("row %d of B: %v, want the leading columns of %v", o, p0.B[o*2:o*2+2], full.B[o*4:o*4+4])
		}
	}
	if err := a.Truncate(3); err == nil {
		t.Fatal("truncating a rank-2 adapter to 3 succeeded")
	}
}

// TestOrthogonalInit: init orthogonal gives A orthonormal rows, seeded.
func TestOrthogonalInit(t *testing.T) {
	c := storiesConfig(t)
	a := newTestAdapter(t, c, InitOrthogonal, 5)
	b := newTestAdapter(t, c, InitOrthogonal, 5)
	for pi, p := range a.Pairs {
		r, in := a.RankOf(p), p.Module.In
		for i := 0; i < r; i++ {
			for j := 0; j < r; j++ {
				var d float64
				for k := 0; k < in; k++ {
					d += float64(p.A[i*in+k]) * float64(p.A[j*in+k])
				}
				want := 0.0
				if i == j {
					want = 1
				}
				if math.Abs(d-want) > 1e-5 {
					t.Fatalf("%s: (A·Aᵀ)[%d][%d] = %g", p.Module.Path, i, j, d)
				}
			}
		}
		if !slices.Equal(p.A, b.Pairs[pi].A) {
			t.Fatal("same seed, different orthogonal A")
		}
	}
}
