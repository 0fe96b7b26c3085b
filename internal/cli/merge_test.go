package cli

import (
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loractl/loractl/internal/lora"
	"github.com/loractl/loractl/internal/model"
	"github.com/loractl/loractl/internal/safetensors"
)

// mergeAdapter saves a random adapter (B random too, so it changes the model) for stories260K
// into dir.
func mergeAdapter(t *testing.T, dir string, targets []string, r int, seed uint64) {
	t.Helper()
	cfg, err := model.LoadConfig(stories(t))
	if err != nil {
		t.Fatal(err)
	}
	mods, err := lora.Select(lora.Modules(cfg), targets, nil)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed, 5))
	a, err := lora.New(lora.Config{R: r, Alpha: 2 * float64(r), Fingerprint: lora.Fingerprint(cfg)}, mods, lora.InitDefault, rng)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range a.Pairs {
		for i := range p.B {
			p.B[i] = float32(0.05 * rng.NormFloat64())
		}
	}
	if err := a.Save(dir); err != nil {
		t.Fatal(err)
	}
}

func TestMergeCommand(t *testing.T) {
	st := stories(t)
	tmp := t.TempDir()
	a := filepath.Join(tmp, "run:v1") // a ':' in the path
	b := filepath.Join(tmp, "b")
	mergeAdapter(t, a, []string{"all-linear"}, 4, 1)
	mergeAdapter(t, b, []string{"q_proj", "v_proj"}, 4, 2)
	out := filepath.Join(tmp, "merged")
	code, stdout, stderr := run(t, "", "merge", "--base", st, "--adapter", a+":0.75", "--adapter", b, "--out", out, "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.Contains(stderr, "peak memory") || !strings.Contains(stderr, "merged 2 adapter(s)") {
		t.Fatalf("stderr does not report the merge and its peak memory: %q", stderr)
	}
	var sum struct {
		Adapters []struct {
			Dir    string  `json:"dir"`
			Weight float64 `json:"weight"`
		} `json:"adapters"`
		Files    []string `json:"files"`
		PeakHeap uint64   `json:"peak_heap_inuse_bytes"`
		DType    string   `json:"dtype"`
	}
	if err := json.Unmarshal([]byte(stdout), &sum); err != nil {
		t.Fatalf("--json output: %v\n%s", err, stdout)
	}
	if len(sum.Adapters) != 2 || sum.Adapters[0].Dir != a || sum.Adapters[0].Weight != 0.75 || sum.Adapters[1].Weight != 1 {
		t.Fatalf("adapters parsed as %+v", sum.Adapters)
	}
	if sum.DType != "f32" || len(sum.Files) != 1 || sum.PeakHeap == 0 {
		t.Fatalf("summary %+v", sum)
	}
	// The whole argument is the folder when it exists and the part before ':' does not.
	out2 := filepath.Join(tmp, "merged2")
	if code, _, stderr := run(t, "", "merge", "--base", st, "--adapter", a, "--out", out2, "--dtype", "bf16", "--max-shard-size", "300KB"); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	ck, err := safetensors.OpenCheckpoint(out2)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	if len(ck.Files()) < 2 {
		t.Fatalf("%d shard files at 300KB", len(ck.Files()))
	}
	if info, _ := ck.Info("model.embed_tokens.weight"); info.DType != safetensors.BF16 {
		t.Fatalf("embed_tokens is %s", info.DType)
	}
	// An existing --out is refused, then replaced with --overwrite.
	if code, _, stderr := run(t, "", "merge", "--base", st, "--adapter", b, "--out", out); code != 1 || !strings.Contains(stderr, "--overwrite") {
		t.Fatalf("existing --out: exit %d, %q", code, stderr)
	}
	if code, _, stderr := run(t, "", "merge", "--base", st, "--adapter", b, "--out", out, "--overwrite", "--method", "ties", "--density", "0.3"); code != 0 {
		t.Fatalf("--overwrite: exit %d, %s", code, stderr)
	}
	// Options from a YAML file.
	cfg := filepath.Join(tmp, "merge.yaml")
	os.WriteFile(cfg, []byte("base: "+st+"\nadapter:\n  - "+b+":0.5\nout: "+filepath.Join(tmp, "merged3")+"\nmethod: svd\nrank: 2\n"), 0o644)
	if code, _, stderr := run(t, "", "merge", "--config", cfg); code != 0 || !strings.Contains(stderr, "(svd)") {
		t.Fatalf("--config: exit %d, %s", code, stderr)
	}
}

func TestMergeBadInput(t *testing.T) {
	st := stories(t)
	tmp := t.TempDir()
	a := filepath.Join(tmp, "a")
	mergeAdapter(t, a, []string{"q_proj"}, 2, 3)
	out := filepath.Join(tmp, "out")
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--adapter", a + ":heavy"}, 2, "not a number"},
		{[]string{"--adapter", a + ":nan"}, 2, "not a finite number"},
		{[]string{"--adapter", a + ":inf"}, 2, "not a finite number"},
		{[]string{"--adapter", a, "--method", "average"}, 2, "unknown --method"},
		{[]string{"--adapter", a, "--rank", "2"}, 1, "not trained with lora.method dylora"},
		{[]string{"--adapter", a, "--max-shard-size", "big"}, 2, "--max-shard-size"},
		{[]string{"--adapter", a, "--dtype", "fp8"}, 1, "fp8"},
		{[]string{"--adapter", a, "--method", "dare_ties", "--density", "0"}, 1, "--density"},
		{[]string{"--adapter", filepath.Join(tmp, "missing")}, 1, "adapter_config.json"},
		{[]string{}, 2, "--adapter"},
	} {
		args := append([]string{"merge", "--base", st, "--out", out}, c.args...)
		code, _, stderr := run(t, "", args...)
		if code != c.code || !strings.Contains(stderr, c.want) || strings.Contains(stderr, "panic") {
			t.Errorf("%v: exit %d, stderr %q; want exit %d mentioning %q", c.args, code, stderr, c.code, c.want)
		}
		if _, err := os.Stat(out); err == nil {
			t.Fatalf("%v left %s", c.args, out)
		}
	}
}
