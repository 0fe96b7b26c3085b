package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestVariantCombinations: the LoRA-variant keys validate, and an unsupported combination is
// an error that names both keys.
func TestVariantCombinations(t *testing.T) {
	base := []string{"model.path=m", "data.train=d.jsonl"}
	for _, c := range []struct {
		sets []string
		want []string // every string must be in the error
	}{
		{[]string{"lora.method=full", "lora.freeze_a=true"}, []string{"lora.freeze_a", "lora.method full"}},
		{[]string{"lora.method=full", "lora.lora_plus_ratio=16"}, []string{"lora.lora_plus_ratio", "lora.method full"}},
		{[]string{"lora.method=full", "lora.rank_pattern.q_proj=4"}, []string{"lora.rank_pattern", "lora.method full"}},
		{[]string{"lora.freeze_a=true", "lora.lora_plus_ratio=16"}, []string{"lora.lora_plus_ratio", "lora.freeze_a"}},
		{[]string{"lora.rank_schedule=linear", "lora.r_min=2", "lora.r_max=8", "lora.rank_pattern.q_proj=4"}, []string{"lora.rank_schedule", "lora.rank_pattern"}},
		{[]string{"lora.method=dylora", "lora.r_min=2", "lora.r_max=8", "lora.rank_pattern.q_proj=4"}, []string{"lora.method dylora", "lora.rank_pattern"}},
		{[]string{"lora.method=dylora", "lora.r_min=2", "lora.r_max=8", "lora.rank_schedule=linear"}, []string{"lora.method dylora", "lora.rank_schedule"}},
		{[]string{"lora.method=dylora"}, []string{"lora.method dylora needs lora.r_min"}},
		{[]string{"lora.rank_schedule=linear", "lora.r_min=4", "lora.r_max=2"}, []string{"lora.r_max ≥ lora.r_min"}},
		{[]string{"lora.r_min=2"}, []string{"lora.r_min and lora.r_max apply to"}},
		{[]string{"lora.init_a=orthogonal", "lora.init=gaussian"}, []string{"lora.init_a", "lora.init gaussian"}},
		{[]string{"lora.init=loftq", "model.quantize=nf4", "lora.rank_pattern.q_proj=2"}, []string{"lora.init loftq", "lora.rank_pattern"}},
		{[]string{"lora.init_a=qr"}, []string{`lora.init_a is "qr"`}},
		{[]string{"lora.lora_plus_ratio=-1"}, []string{"lora.lora_plus_ratio must be positive"}},
		{[]string{"lora.method=dora", "lora.init=loftq", "model.quantize=nf4"}, []string{"lora.init loftq", "not dora"}},
		{[]string{"lora.method=vera", "lora.rank_pattern.q_proj=4"}, []string{"lora.method vera", "lora.rank_pattern"}},
		{[]string{"lora.method=tied", "lora.freeze_a=true"}, []string{"lora.method tied", "lora.freeze_a"}},
		{[]string{"lora.method=nola", "lora.lora_plus_ratio=4"}, []string{"lora.method nola", "lora.lora_plus_ratio"}},
		{[]string{"lora.method=vera", "lora.rslora=true"}, []string{"lora.method vera", "lora.rslora"}},
		{[]string{"lora.method=adalora", "lora.target_r=9"}, []string{"lora.target_r must be in [1, lora.init_r = 8]"}},
		{[]string{"lora.method=adalora", "lora.tinit=150", "lora.tfinal=60"}, []string{"lora.tinit (150) + lora.tfinal (60)"}},
		{[]string{"lora.method=sora", "lora.rank_schedule=linear", "lora.r_min=1", "lora.r_max=4"}, []string{"lora.method sora", "lora.rank_schedule"}},
		{[]string{"lora.init_r=4"}, []string{"lora.init_r applies to lora.method adalora"}},
		{[]string{"lora.method=sparse"}, []string{`lora.method is "sparse"`}},
		{[]string{"lora.rank_pattern.q_proj=0"}, []string{"want a whole number of at least 1"}},
		{[]string{"lora.rank_pattern.(=2"}, []string{"not a valid pattern"}},
	} {
		_, err := ResolveTrain("", append(append([]string{}, base...), c.sets...), nil)
		for _, w := range c.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("%v: got %v, want it to mention %q", c.sets, err, w)
			}
		}
	}
	for _, ok := range [][]string{
		{"lora.method=dylora", "lora.r_min=1", "lora.r_max=8"},
		{"lora.rank_schedule=linear", "lora.r_min=2", "lora.r_max=8"},
		{"lora.freeze_a=true", "lora.init_a=orthogonal"},
		{"lora.lora_plus_ratio=16"},
		{"lora.method=dora"}, {"lora.method=dora", "lora.rank_pattern.q_proj=2", "lora.lora_plus_ratio=4"},
		{"lora.method=vera", "lora.r=4"}, {"lora.method=tied"}, {"lora.method=nola", "lora.nola_k=8"},
		{"lora.method=sora", "lora.lora_plus_ratio=4"}, {"lora.method=adalora", "lora.init_r=8", "lora.target_r=2"},
	} {
		if _, err := ResolveTrain("", append(append([]string{}, base...), ok...), nil); err != nil {
			t.Errorf("%v: %v", ok, err)
		}
	}
}

// TestRankPatternFromFileAndSet: rank_pattern is a mapping whose keys contain dots; the file's
// entries and --set lora.rank_pattern.<pattern>=r merge, --set winning.
func TestRankPatternFromFileAndSet(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "c.yaml")
	os.WriteFile(f, []byte("model: {path: m}\ndata: {train: d.jsonl}\nlora:\n  rank_pattern:\n    down_proj: 16\n    layers.0.self_attn.q_proj: 2\n"), 0o644)
	c, err := ResolveTrain(f, []string{"lora.rank_pattern.down_proj=12", "lora.rank_pattern.v_proj=3"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{"down_proj": 12, "layers.0.self_attn.q_proj": 2, "v_proj": 3}
	if len(c.LoRA.RankPattern) != len(want) {
		t.Fatalf("rank_pattern %v, want %v", c.LoRA.RankPattern, want)
	}
	for k, v := range want {
		if c.LoRA.RankPattern[k] != v {
			t.Fatalf("rank_pattern %v, want %v", c.LoRA.RankPattern, want)
		}
	}
	y, err := c.YAML()
	if err != nil || !strings.Contains(string(y), "layers.0.self_attn.q_proj: 2") {
		t.Fatalf("YAML: %s %v", y, err)
	}
	os.WriteFile(f, []byte("model: {path: m}\ndata: {train: d.jsonl}\nlora:\n  rank_pattern: 4\n"), 0o644)
	if _, err := ResolveTrain(f, nil, nil); err == nil || !strings.Contains(err.Error(), "must be a mapping") {
		t.Fatalf("rank_pattern: 4 gave %v", err)
	}
}

// TestRankOfLinear: rank_schedule linear runs from r_min in the first layer to r_max in the last.
func TestRankOfLinear(t *testing.T) {
	l := LoRASection{RMin: 2, RMax: 8}
	var got []int
	for i := 0; i < 5; i++ {
		got = append(got, l.RankOf(i, 5))
	}
	if got[0] != 2 || got[4] != 8 || got[2] != 5 {
		t.Fatalf("ranks %v", got)
	}
	for i := 1; i < 5; i++ {
		if got[i] < got[i-1] {
			t.Fatalf("ranks %v do not grow", got)
		}
	}
}
