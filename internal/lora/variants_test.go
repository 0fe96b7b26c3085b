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

	"github.com/loractl/loractl/internal/safetensors"
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

// TestVeRASaveLoad: a VeRA adapter in PEFT's layout reads back as the equivalent LoRA factors
// (A' = diag(d)·A[:, :in], B' = diag(b)·B[:out], scale 1); a file without loractl's input
// widths (as PEFT writes it) needs the base, which LoadFor supplies.
func TestVeRASaveLoad(t *testing.T) {
	c := storiesConfig(t)
	mods, _ := Select(Modules(c), []string{"q_proj", "k_proj", "down_proj"}, nil)
	r := 3
	rng := rand.New(rand.NewPCG(2, 2))
	maxIn, maxOut := 0, 0
	for _, m := range mods {
		maxIn, maxOut = max(maxIn, m.In), max(maxOut, m.Out)
	}
	v := &VeRA{Config: Config{R: r, Base: "b", Fingerprint: Fingerprint(c)}, MaxIn: maxIn, MaxOut: maxOut, DInitial: 0.1,
		A: make([]float32, r*maxIn), B: make([]float32, maxOut*r)}
	for i := range v.A {
		v.A[i] = float32(rng.NormFloat64())
	}
	for i := range v.B {
		v.B[i] = float32(rng.NormFloat64())
	}
	for _, m := range mods {
		p := VeRAPair{Module: m, LambdaB: make([]float32, m.Out), LambdaD: make([]float32, r)}
		for i := range p.LambdaB {
			p.LambdaB[i] = float32(rng.NormFloat64())
		}
		for i := range p.LambdaD {
			p.LambdaD[i] = float32(rng.NormFloat64())
		}
		v.Pairs = append(v.Pairs, p)
	}
	dir := t.TempDir()
	if err := SaveVeRA(dir, v); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(filepath.Join(dir, ConfigFile))
	if !strings.Contains(string(raw), `"peft_type": "VERA"`) || !strings.Contains(string(raw), `"save_projection": true`) {
		t.Fatalf("config %s", raw)
	}
	a, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	check := func(a *Adapter) {
		t.Helper()
		if len(a.Pairs) != len(mods) || a.Config.Method != "vera" {
			t.Fatalf("%d pairs, method %q", len(a.Pairs), a.Config.Method)
		}
		for _, p := range a.Pairs {
			if a.ScaleOf(p) != 1 {
				t.Fatalf("scale %g, want 1", a.ScaleOf(p))
			}
			var vp VeRAPair
			for _, q := range v.Pairs {
				if q.Module.Path == p.Module.Path {
					vp = q
				}
			}
			in := p.Module.In
			for o := 0; o < p.Module.Out; o++ {
				for i := 0; i < in; i++ {
					var want float64
					for k := 0; k < r; k++ {
						want += float64(vp.LambdaB[o]) * float64(v.B[o*r+k]) * float64(vp.LambdaD[k]) * float64(v.A[k*maxIn+i])
					}
					if got := float64(a.Delta(p)[o*in+i]); math.Abs(got-want) > 1e-5*(1+math.Abs(want)) {
						t.Fatalf("%s ΔW[%d][%d] = %g, want %g", p.Module.Path, o, i, got, want)
					}
				}
			}
		}
	}
	check(a)
	// As PEFT writes it: no loractl metadata.
	rewriteAsPEFT(t, dir, dir, nil)
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "input widths") {
		t.Fatalf("Load of a PEFT VeRA file: %v", err)
	}
	b, err := LoadFor(dir, c, "")
	if err != nil {
		t.Fatal(err)
	}
	check(b)
}

// TestDoRASaveLoad: DoRA's magnitude is saved as PEFT saves it (lora_magnitude_vector, use_dora)
// and reads back; a file with use_dora but no magnitude is an error naming the module.
func TestDoRASaveLoad(t *testing.T) {
	a := newTestAdapter(t, storiesConfig(t), InitDefault, 3)
	for _, p := range a.Pairs {
		p.M = make([]float32, p.Module.Out)
		for i := range p.M {
			p.M[i] = float32(i) + 0.5
		}
	}
	dir := t.TempDir()
	if err := a.Save(dir); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(filepath.Join(dir, ConfigFile))
	if !strings.Contains(string(raw), `"use_dora": true`) {
		t.Fatalf("config has no use_dora: %s", raw)
	}
	f, err := safetensors.Open(filepath.Join(dir, WeightsFile))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := f.Info("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"); !ok {
		t.Fatal("no base_model.model.<path>.lora_magnitude_vector tensor")
	}
	f.Close()
	b, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range a.Pairs {
		if !slices.Equal(p.M, b.Pairs[i].M) {
			t.Fatalf("%s: magnitude differs after load", p.Module.Path)
		}
	}
	if b.Config.Method != "dora" {
		t.Fatalf("method %q", b.Config.Method)
	}
	// use_dora without the magnitudes.
	os.WriteFile(filepath.Join(dir, ConfigFile), raw, 0o644)
	plain := newTestAdapter(t, storiesConfig(t), InitDefault, 3)
	d2 := t.TempDir()
	plain.Save(d2)
	os.WriteFile(filepath.Join(d2, ConfigFile), raw, 0o644)
	if _, err := Load(d2); err == nil || !strings.Contains(err.Error(), "no lora_magnitude_vector") {
		t.Fatalf("use_dora without magnitudes: %v", err)
	}
}

// TestVeRAWithoutProjections: a VeRA adapter saved as PEFT does with save_projection=False (no
// vera_A, vera_B in the file) loads with the projections regenerated from projection_prng_key,
// exactly as the one that holds them.
func TestVeRAWithoutProjections(t *testing.T) {
	c := storiesConfig(t)
	mods, _ := Select(Modules(c), []string{"v_proj", "up_proj"}, nil)
	r, key := 4, uint64(1234)
	maxIn, maxOut := 0, 0
	for _, m := range mods {
		maxIn, maxOut = max(maxIn, m.In), max(maxOut, m.Out)
	}
	A, B := VeRAProjections(key, r, maxIn, maxOut)
	v := &VeRA{Config: Config{R: r}, A: A, B: B, MaxIn: maxIn, MaxOut: maxOut, DInitial: 0.1, PRNGKey: key, SaveProjection: true}
	rng := rand.New(rand.NewPCG(9, 9))
	for _, m := range mods {
		p := VeRAPair{Module: m, LambdaB: make([]float32, m.Out), LambdaD: make([]float32, r)}
		for i := range p.LambdaB {
			p.LambdaB[i] = float32(rng.NormFloat64())
		}
		for i := range p.LambdaD {
			p.LambdaD[i] = float32(rng.NormFloat64())
		}
		v.Pairs = append(v.Pairs, p)
	}
	full, bare := t.TempDir(), t.TempDir()
	if err := SaveVeRA(full, v); err != nil {
		t.Fatal(err)
	}
	want, err := Load(full)
	if err != nil {
		t.Fatal(err)
	}
	// The PEFT-style copy: lambdas only, no loractl metadata, save_projection false.
	rewriteAsPEFT(t, full, bare, func(name string) bool { return strings.HasPrefix(name, "base_model.vera_") })
	raw, _ := os.ReadFile(filepath.Join(full, ConfigFile))
	cfg := strings.Replace(string(raw), `"save_projection": true`, `"save_projection": false`, 1)
	if cfg == string(raw) || !strings.Contains(cfg, `"projection_prng_key": 1234`) {
		t.Fatalf("config %s", raw)
	}
	if err := os.WriteFile(filepath.Join(bare, ConfigFile), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := LoadFor(bare, c, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Pairs) != len(want.Pairs) {
		t.Fatalf("%d pairs, want %d", len(got.Pairs), len(want.Pairs))
	}
	for i, p := range got.Pairs {
		q := want.Pairs[i]
		if p.Module.Path != q.Module.Path || !slices.Equal(p.A, q.A) || !slices.Equal(p.B, q.B) {
			t.Fatalf("%s: regenerated factors differ from the saved ones", p.Module.Path)
		}
	}
	// loractl's own save without the projections: none in the file, and the same adapter back.
	v.SaveProjection = false
	own := t.TempDir()
	if err := SaveVeRA(own, v); err != nil {
		t.Fatal(err)
	}
	if raw, _ := os.ReadFile(filepath.Join(own, ConfigFile)); !strings.Contains(string(raw), `"save_projection": false`) {
		t.Fatalf("config %s", raw)
	}
	g, err := safetensors.Open(filepath.Join(own, WeightsFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, info := range g.Tensors() {
		if strings.HasPrefix(info.Name, "base_model.vera_") {
			t.Fatalf("%s is in the file", info.Name)
		}
	}
	g.Close()
	mine, err := Load(own)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range mine.Pairs {
		if !slices.Equal(p.A, want.Pairs[i].A) || !slices.Equal(p.B, want.Pairs[i].B) {
			t.Fatalf("%s: differs after a save without projections", p.Module.Path)
		}
	}
	// Projections that are not PEFT's draw are stored whatever SaveProjection says.
	v.A[0]++
	if err := SaveVeRA(own, v); err != nil {
		t.Fatal(err)
	}
	if raw, _ := os.ReadFile(filepath.Join(own, ConfigFile)); !strings.Contains(string(raw), `"save_projection": true`) {
		t.Fatalf("changed projections were not stored: %s", raw)
	}
	// With save_projection true the matrices must be in the file.
	if err := os.WriteFile(filepath.Join(bare, ConfigFile), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadFor(bare, c, ""); err == nil || !strings.Contains(err.Error(), "vera_A and vera_B are missing") {
		t.Fatalf("save_projection true without the matrices: %v", err)
	}
}

// rewriteAsPEFT writes src's adapter weights to dst as PEFT writes them: the same float32
// tensors without loractl's header metadata, leaving out those that drop reports.
func rewriteAsPEFT(t *testing.T, src, dst string, drop func(name string) bool) {
	t.Helper()
	f, err := safetensors.Open(filepath.Join(src, WeightsFile))
	if err != nil {
		t.Fatal(err)
	}
	var ts []safetensors.Tensor
	for _, info := range f.Tensors() {
		if drop != nil && drop(info.Name) {
			continue
		}
		vals, _ := f.Float32(info.Name)
		b, _ := safetensors.EncodeFloat32(safetensors.F32, vals)
		ts = append(ts, safetensors.Tensor{Name: info.Name, DType: safetensors.F32, Shape: info.Shape, Data: b})
	}
	f.Close()
	if err := safetensors.Write(filepath.Join(dst, WeightsFile), ts, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
}
