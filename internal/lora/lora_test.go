package lora

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/loractl/loractl/internal/backend/cpu"
	"github.com/loractl/loractl/internal/model"
	"github.com/loractl/loractl/internal/refdata"
	"github.com/loractl/loractl/internal/safetensors"
)

func storiesConfig(t *testing.T) *model.Config {
	t.Helper()
	c, err := model.LoadConfig(refdata.Stories260K(t))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestModulesAndSelect(t *testing.T) {
	c := storiesConfig(t)
	mods := Modules(c)
	if len(mods) != 5*7 {
		t.Fatalf("%d modules, want 35", len(mods))
	}
	byName := map[string]Module{}
	for _, m := range mods {
		byName[m.Path] = m
	}
	for path, want := range map[string][2]int{ // (in, out) from config.json: C=64, KV=32, F=172
		"model.layers.0.self_attn.q_proj": {64, 64}, "model.layers.4.self_attn.k_proj": {64, 32},
		"model.layers.2.self_attn.o_proj": {64, 64}, "model.layers.1.mlp.gate_proj": {64, 172},
		"model.layers.3.mlp.down_proj": {172, 64},
	} {
		if m := byName[path]; m.In != want[0] || m.Out != want[1] {
			t.Errorf("%s: in %d out %d, want %v", path, m.In, m.Out, want)
		}
	}
	for _, c := range []struct {
		targets []string
		layers  []int
		want    int
	}{
		{[]string{"q_proj", "v_proj"}, nil, 10},
		{[]string{"all-linear"}, nil, 35},
		{[]string{"all-linear"}, []int{0, 4}, 14},
		{[]string{`re:model\.layers\.[01]\.mlp\..*`}, nil, 6},
		{[]string{"q_proj", "q_proj"}, nil, 5},
	} {
		got, err := Select(mods, c.targets, c.layers)
		if err != nil || len(got) != c.want {
			t.Errorf("Select(%v, %v) = %d modules, %v; want %d", c.targets, c.layers, len(got), err, c.want)
		}
	}
	for _, c := range []struct {
		targets []string
		layers  []int
		want    string
	}{
		{[]string{"qproj"}, nil, "available names: q_proj, k_proj"},
		{[]string{"re:("}, nil, "not a valid regular expression"},
		{[]string{"q_proj"}, []int{9}, "layers 0..4"},
	} {
		if _, err := Select(mods, c.targets, c.layers); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Select(%v, %v): %v, want %q", c.targets, c.layers, err, c.want)
		}
	}
}

func newTestAdapter(t *testing.T, c *model.Config, init Init, seed uint64) *Adapter {
	t.Helper()
	mods, err := Select(Modules(c), []string{"all-linear"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(Config{R: 4, Alpha: 8, Base: "stories260K"}, mods, init, rand.New(rand.NewPCG(seed, 1)))
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestInit(t *testing.T) {
	c := storiesConfig(t)
	a := newTestAdapter(t, c, InitDefault, 1)
	for _, p := range a.Pairs {
		bound := 1 / math.Sqrt(float64(p.Module.In))
		var maxAbs, sum2 float64
		for _, v := range p.A {
			maxAbs = max(maxAbs, math.Abs(float64(v)))
			sum2 += float64(v) * float64(v)
		}
		// Uniform(-b, b) has variance b²/3; with ≥ 256 draws the sample is within 30%.
		variance := sum2 / float64(len(p.A))
		if maxAbs > bound || math.Abs(variance/(bound*bound/3)-1) > 0.3 {
			t.Fatalf("%s: max|A| %g (bound %g), var %g (want %g)", p.Module.Path, maxAbs, bound, variance, bound*bound/3)
		}
		for _, v := range p.B {
			if v != 0 {
				t.Fatalf("%s: B not zero", p.Module.Path)
			}
		}
	}
	g := newTestAdapter(t, c, InitGaussian, 1)
	var sum2 float64
	n := 0
	for _, p := range g.Pairs {
		for _, v := range p.A {
			sum2 += float64(v) * float64(v)
			n++
		}
	}
	if std := math.Sqrt(sum2 / float64(n)); math.Abs(std-0.25) > 0.02 {
		t.Fatalf("gaussian init std %g, want 1/r = 0.25", std)
	}
	b := newTestAdapter(t, c, InitDefault, 1)
	if !slices.Equal(a.Pairs[3].A, b.Pairs[3].A) {
		t.Fatal("same seed gave different A")
	}
	mods := Modules(c)
	if _, err := New(Config{R: 33, Alpha: 1}, mods[1:2], InitDefault, rand.New(rand.NewPCG(1, 1))); err == nil || !strings.Contains(err.Error(), "choose r ≤ 32") {
		t.Fatalf("r > min(in, out): %v", err)
	}
}

func TestScale(t *testing.T) {
	if s := (Config{R: 16, Alpha: 32}).Scale(); s != 2 {
		t.Fatalf("alpha/r = %g", s)
	}
	if s := (Config{R: 16, Alpha: 32, RSLoRA: true}).Scale(); s != 8 {
		t.Fatalf("alpha/√r = %g", s)
	}
}

// TestSaveLoadPEFT checks the exact PEFT layout and a lossless round trip.
func TestSaveLoadPEFT(t *testing.T) {
	c := storiesConfig(t)
	a := newTestAdapter(t, c, InitDefault, 2)
	rng := rand.New(rand.NewPCG(3, 3))
	for _, p := range a.Pairs {
		for i := range p.B {
			p.B[i] = float32(rng.NormFloat64())
		}
	}
	dir := t.TempDir()
	if err := a.Save(dir); err != nil {
		t.Fatal(err)
	}
	f, err := safetensors.Open(filepath.Join(dir, WeightsFile))
	if err != nil {
		t.Fatal(err)
	}
	info, ok := f.Info("base_model.model.model.layers.0.mlp.down_proj.lora_A.weight")
	if !ok || !slices.Equal(info.Shape, []int{4, 172}) || info.DType != safetensors.F32 {
		t.Fatalf("lora_A of down_proj: %+v %v", info, ok)
	}
	info, ok = f.Info("base_model.model.model.layers.0.mlp.down_proj.lora_B.weight")
	if !ok || !slices.Equal(info.Shape, []int{64, 4}) {
		t.Fatalf("lora_B of down_proj: %+v %v", info, ok)
	}
	if len(f.Tensors()) != 70 {
		t.Fatalf("%d tensors, want 70", len(f.Tensors()))
	}
	f.Close()

	raw, _ := os.ReadFile(filepath.Join(dir, ConfigFile))
	var cfg map[string]any
	if err := json.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	keys := make([]string, 0, len(cfg))
	for k := range cfg {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	want := []string{"base_model_name_or_path", "bias", "fan_in_fan_out", "inference_mode", "init_lora_weights", "layers_to_transform",
		"lora_alpha", "lora_dropout", "modules_to_save", "peft_type", "r", "target_modules", "task_type", "use_rslora"}
	if !slices.Equal(keys, want) {
		t.Fatalf("adapter_config keys %v, want %v", keys, want)
	}
	if cfg["peft_type"] != "LORA" || cfg["task_type"] != "CAUSAL_LM" || cfg["bias"] != "none" || cfg["r"] != 4.0 {
		t.Fatalf("adapter_config %v", cfg)
	}

	b, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Pairs) != len(a.Pairs) || b.Config.R != 4 || b.Config.Alpha != 8 {
		t.Fatalf("loaded %d pairs, config %+v", len(b.Pairs), b.Config)
	}
	for i := range a.Pairs {
		pa, pb := a.Pairs[i], b.Pairs[i]
		if pa.Module != pb.Module || !slices.Equal(pa.A, pb.A) || !slices.Equal(pa.B, pb.B) {
			t.Fatalf("pair %d differs after round trip: %+v vs %+v", i, pa.Module, pb.Module)
		}
	}
	if err := b.CheckBase(c, dir); err != nil {
		t.Fatal(err)
	}
}

func TestLoadErrors(t *testing.T) {
	c := storiesConfig(t)
	a := newTestAdapter(t, c, InitDefault, 2)
	dir := t.TempDir()
	if err := a.Save(dir); err != nil {
		t.Fatal(err)
	}
	// Another base: a config with a different hidden size.
	other := *c
	other.HiddenSize, other.NumAttentionHeads, other.NumKeyValueHeads = 128, 16, 8
	if err := a.CheckBase(&other, dir); err == nil || !strings.Contains(err.Error(), "another base model") {
		t.Fatalf("CheckBase: %v", err)
	}
	fewer := *c
	fewer.NumHiddenLayers = 2
	if err := a.CheckBase(&fewer, dir); err == nil || !strings.Contains(err.Error(), "model.layers.2") {
		t.Fatalf("CheckBase with fewer layers: %v", err)
	}
	if _, err := Load(t.TempDir()); err == nil || !strings.Contains(err.Error(), "adapter_config.json") {
		t.Fatalf("missing config: %v", err)
	}
	os.WriteFile(filepath.Join(dir, ConfigFile), []byte(`{"peft_type":"LORA","r":4,"lora_alpha":8,"use_dora":true}`), 0o644)
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "no lora_magnitude_vector") {
		t.Fatalf("DoRA without magnitudes: %v", err)
	}
	os.WriteFile(filepath.Join(dir, ConfigFile), []byte(`{"peft_type":"PREFIX_TUNING","r":4}`), 0o644)
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "PREFIX_TUNING") {
		t.Fatalf("peft_type: %v", err)
	}
}

// TestLoadPEFTNamesWithAdapterName accepts tensors saved with PEFT's adapter name in the key.
func TestLoadPEFTNamesWithAdapterName(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, ConfigFile), []byte(`{"peft_type":"LORA","r":2,"lora_alpha":4,"target_modules":"q_proj"}`), 0o644)
	enc := func(v []float32) []byte { b, _ := safetensors.EncodeFloat32(safetensors.F32, v); return b }
	ts := []safetensors.Tensor{
		{Name: "base_model.model.model.layers.1.self_attn.q_proj.lora_A.default.weight", DType: safetensors.F32, Shape: []int{2, 3}, Data: enc([]float32{1, 2, 3, 4, 5, 6})},
		{Name: "base_model.model.model.layers.1.self_attn.q_proj.lora_B.default.weight", DType: safetensors.F32, Shape: []int{3, 2}, Data: enc([]float32{1, 0, 0, 1, 1, 1})},
	}
	if err := safetensors.Write(filepath.Join(dir, WeightsFile), ts, nil); err != nil {
		t.Fatal(err)
	}
	a, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	p := a.Pairs[0]
	if p.Module.Path != "model.layers.1.self_attn.q_proj" || p.Module.In != 3 || p.Module.Out != 3 || p.Module.Layer != 1 {
		t.Fatalf("module %+v", p.Module)
	}
	// Delta = s·B·A with s = 2: rows B[o]·A.
	want := []float32{2, 4, 6, 8, 10, 12, 10, 14, 18}
	if got := a.Delta(p); !slices.Equal(got, want) {
		t.Fatalf("delta %v, want %v", got, want)
	}
}

// TestZeroBLeavesModelUnchanged: with B = 0 the merged model's logits equal the base's exactly;
// with B ≠ 0 they change.
func TestZeroBLeavesModelUnchanged(t *testing.T) {
	dir := refdata.Stories260K(t)
	tokens := []int{1, 403, 407, 261, 378, 432, 383}
	base, err := model.Load(dir, cpu.New())
	if err != nil {
		t.Fatal(err)
	}
	want, _ := base.ForwardAll(tokens)
	want = slices.Clone(want)

	m, _ := model.Load(dir, cpu.New())
	a := newTestAdapter(t, m.Config(), InitDefault, 5)
	if err := a.MergeInto(m); err != nil {
		t.Fatal(err)
	}
	got, _ := m.ForwardAll(tokens)
	if !slices.Equal(got, want) {
		t.Fatal("an adapter with B = 0 changed the logits")
	}
	for _, p := range a.Pairs {
		for i := range p.B {
			p.B[i] = 0.01
		}
	}
	if err := a.MergeInto(m); err != nil {
		t.Fatal(err)
	}
	got, _ = m.ForwardAll(tokens)
	if slices.Equal(got, want) {
		t.Fatal("an adapter with B ≠ 0 left the logits unchanged")
	}
}

// TestPEFTTargets: target_modules names the adapted modules as PEFT matches them: short names
// (with layers_to_transform) for a full set, else one regular expression that PEFT full-matches
// against each module path and that matches exactly the adapted ones.
func TestPEFTTargets(t *testing.T) {
	mods := Modules(storiesConfig(t))
	sel := func(targets []string, layers []int) []Module {
		m, err := Select(mods, targets, layers)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	qv := sel([]string{"q_proj", "v_proj"}, nil)
	if got, l := peftTargets(qv, nil, 5); !slices.Equal(got.([]string), []string{"q_proj", "v_proj"}) || l != nil {
		t.Fatalf("q,v: %v %v", got, l)
	}
	some := sel([]string{"all-linear"}, []int{0, 4})
	if got, l := peftTargets(some, []int{0, 4}, 5); len(got.([]string)) != 7 || !slices.Equal(l, []int{0, 4}) {
		t.Fatalf("layers 0, 4: %v %v", got, l)
	}
	for name, c := range map[string]struct {
		mods []Module
	}{
		"one dropped":     {append(slices.Clone(qv[:3]), qv[4:]...)},
		"regex selection": {sel([]string{`re:model\.layers\.[01]\.mlp\..*`}, nil)},
		"layers 0–3 of 5": {qv[:8]}, // the last layer pruned away: complete but for it
	} {
		got, l := peftTargets(c.mods, nil, 5)
		pat, ok := got.(string)
		if !ok || l != nil {
			t.Fatalf("%s: %v %v, want a regular expression and no layers", name, got, l)
		}
		re := regexp.MustCompile(`^(?:` + pat + `)$`) // Python's re.fullmatch
		want := map[string]bool{}
		for _, m := range c.mods {
			want[m.Path] = true
		}
		for _, m := range mods {
			if re.MatchString(m.Path) != want[m.Path] {
				t.Errorf("%s: %s matched %v, want %v (%s)", name, m.Path, !want[m.Path], want[m.Path], pat)
			}
		}
	}
}
