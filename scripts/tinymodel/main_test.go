package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loractl/loractl/internal/backend/cpu"
	"github.com/loractl/loractl/internal/model"
	"github.com/loractl/loractl/internal/safetensors"
	"github.com/loractl/loractl/internal/synth"
	"github.com/loractl/loractl/internal/tokenizer"
)

// runOK runs the command and fails the test unless it exits 0.
func runOK(t *testing.T, args ...string) string {
	t.Helper()
	var out, errOut bytes.Buffer
	if code := run(args, &out, &errOut); code != 0 {
		t.Fatalf("tinymodel %s: exit %d: %s", strings.Join(args, " "), code, errOut.String())
	}
	return out.String()
}

// TestInitLoadsAndRuns writes the default model, loads it with model.Load on the CPU
// backend, and runs a forward over a task sample encoded with its own tokenizer.
func TestInitLoadsAndRuns(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tiny")
	out := runOK(t, "init", "-out", dir)
	if !strings.Contains(out, "93952 parameters") {
		t.Errorf("init output %q does not report 93952 parameters", out)
	}

	m, err := model.Load(dir, cpu.New())
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	cfg := m.Config()
	if cfg.ModelType != "llama" || !cfg.TieWordEmbeddings || cfg.BOSTokenID != synth.BOSID ||
		len(cfg.EOSTokenIDs) != 1 || cfg.EOSTokenIDs[0] != synth.EOSID || cfg.MaxPositionEmbeddings != 64 ||
		cfg.HeadDim != 16 || cfg.NumKeyValueHeads != 2 || cfg.IntermediateSize != 172 {
		t.Errorf("config: %+v", cfg)
	}
	if n := cfg.NumParams(); n != 93952 || n*4 > 1<<20 {
		t.Errorf("NumParams = %d, want 93952 (< 1 MB in F32)", n)
	}

	enc, err := tokenizer.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if enc.VocabSize() != cfg.VocabSize {
		t.Fatalf("tokenizer vocab %d != config vocab_size %d", enc.VocabSize(), cfg.VocabSize)
	}
	ids := enc.Encode("copy abcdef=abcdef", true)
	if len(ids) != 19 || ids[0] != synth.BOSID {
		t.Fatalf("Encode = %v; want <s> and 18 character tokens", ids)
	}
	logits, err := m.ForwardAll(ids)
	if err != nil {
		t.Fatal(err)
	}
	if len(logits) != len(ids)*cfg.VocabSize {
		t.Fatalf("%d logits, want %d", len(logits), len(ids)*cfg.VocabSize)
	}
	// With std 0.02 weights and unit norms the logits are small but not all equal.
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, v := range logits {
		f := float64(v)
		if math.IsNaN(f) || math.IsInf(f, 0) {
			t.Fatal("non-finite logit")
		}
		lo, hi = min(lo, f), max(hi, f)
	}
	if hi-lo < 1e-3 || hi > 5 || lo < -5 {
		t.Errorf("logits in [%g, %g]; want small, distinct values", lo, hi)
	}
}

// TestInitWeights checks the initialisation: norms are 1, matrices have std ≈ 0.02 and
// mean ≈ 0, the same seed gives the same bytes and another seed other weights.
func TestInitWeights(t *testing.T) {
	base := t.TempDir()
	a, b, c := filepath.Join(base, "a"), filepath.Join(base, "b"), filepath.Join(base, "c")
	runOK(t, "init", "-out", a, "-dim", "32", "-layers", "1", "-heads", "2", "-kv-heads", "1", "-hidden", "64", "-seq", "32")
	runOK(t, "init", "-out", b, "-dim", "32", "-layers", "1", "-heads", "2", "-kv-heads", "1", "-hidden", "64", "-seq", "32")
	runOK(t, "init", "-out", c, "-dim", "32", "-layers", "1", "-heads", "2", "-kv-heads", "1", "-hidden", "64", "-seq", "32", "-seed", "2")
	read := func(dir string) []byte {
		data, err := os.ReadFile(filepath.Join(dir, "model.safetensors"))
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	if !bytes.Equal(read(a), read(b)) {
		t.Error("the same seed wrote different weights")
	}
	if bytes.Equal(read(a), read(c)) {
		t.Error("seeds 1 and 2 wrote the same weights")
	}

	f, err := safetensors.Open(filepath.Join(a, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := []string{"model.embed_tokens.weight", "model.norm.weight"}
	for _, s := range []string{"input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj",
		"self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"} {
		want = append(want, "model.layers.0."+s+".weight")
	}
	if got := f.Names(); len(got) != len(want) {
		t.Fatalf("tensors %v, want %v", got, want)
	}
	for _, name := range want {
		info, ok := f.Info(name)
		if !ok || info.DType != safetensors.F32 {
			t.Fatalf("%s: missing or not F32 (%+v)", name, info)
		}
		v, err := f.Float32(name)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(name, "norm.weight") {
			for _, x := range v {
				if x != 1 {
					t.Fatalf("%s holds %g, want all 1", name, x)
				}
			}
			continue
		}
		var s, s2 float64
		for _, x := range v {
			s += float64(x)
			s2 += float64(x) * float64(x)
		}
		n := float64(len(v))
		mean, std := s/n, math.Sqrt(s2/n-(s/n)*(s/n))
		if math.Abs(mean) > 0.004 || math.Abs(std-0.02) > 0.003 {
			t.Errorf("%s: mean %.5f std %.5f, want about 0 and 0.02", name, mean, std)
		}
	}
}

func TestInitRefusesOverwriteAndBadFlags(t *testing.T) {
	dir := t.TempDir()
	runOK(t, "init", "-out", dir, "-dim", "16", "-layers", "1", "-heads", "2", "-kv-heads", "1", "-hidden", "32")
	var out, errOut bytes.Buffer
	if code := run([]string{"init", "-out", dir}, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "-force") {
		t.Errorf("second init: exit %d, %q; want 1 and a hint at -force", code, errOut.String())
	}
	runOK(t, "init", "-out", dir, "-force", "-dim", "16", "-layers", "1", "-heads", "2", "-kv-heads", "1", "-hidden", "32")

	for _, c := range []struct {
		args []string
		msg  string
	}{
		{[]string{"init"}, "-out DIR is required"},
		{[]string{"init", "-out", "x", "-dim", "30", "-heads", "4"}, "not a multiple of -heads"},
		{[]string{"init", "-out", "x", "-dim", "12", "-heads", "4", "-kv-heads", "1"}, "must be even"},
		{[]string{"init", "-out", "x", "-heads", "4", "-kv-heads", "3"}, "not a multiple of -kv-heads"},
		{[]string{"init", "-out", "x", "-layers", "0"}, "must be positive"},
		{[]string{"init", "-out", "x", "-bogus"}, "flag provided but not defined"},
		{[]string{"data", "-out", "x", "-tasks", "sub,mul"}, `unknown synthetic task "mul"`},
		{[]string{"data", "-out", "x", "-n", "0"}, "must be positive"},
		{[]string{"train"}, `unknown command "train"`},
	} {
		errOut.Reset()
		if code := run(c.args, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), c.msg) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", c.args, code, errOut.String(), c.msg)
		}
	}
	if _, err := os.Stat("x"); err == nil {
		t.Error("a rejected command created its output folder")
	}
}

// TestData writes the data files and checks their records: counts, formats, exact answers,
// and eval prompts that never occur in the train files.
func TestData(t *testing.T) {
	dir := t.TempDir()
	runOK(t, "data", "-out", dir, "-n", "300", "-ft-n", "100", "-eval-n", "40", "-tasks", "sub,rev")
	type rec struct {
		Text       *string `json:"text"`
		Prompt     *string `json:"prompt"`
		Completion *string `json:"completion"`
	}
	load := func(name string) []rec {
		f, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		var out []rec
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var r rec
			if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			out = append(out, r)
		}
		return out
	}
	for _, c := range []struct {
		file string
		n    int
	}{{"pretrain.train.jsonl", 300}, {"pretrain.eval.jsonl", 40}} {
		recs := load(c.file)
		if len(recs) != c.n {
			t.Errorf("%s: %d records, want %d", c.file, len(recs), c.n)
		}
		for _, r := range recs {
			if r.Text == nil || r.Prompt != nil {
				t.Fatalf("%s: record %+v is not {\"text\"}", c.file, r)
			}
			i := strings.IndexByte(*r.Text, '=')
			if i < 0 || !synth.Score((*r.Text)[:i+1], (*r.Text)[i+1:]) {
				t.Errorf("%s: %q is not a correct sample", c.file, *r.Text)
			}
		}
	}
	for _, task := range []string{"sub", "rev"} {
		train := map[string]bool{}
		for _, r := range load(task + ".train.jsonl") {
			if r.Prompt == nil || r.Completion == nil || !synth.Score(*r.Prompt, *r.Completion) {
				t.Fatalf("%s.train.jsonl: bad record %+v", task, r)
			}
			train[*r.Prompt] = true
		}
		eval := load(task + ".eval.jsonl")
		if len(train) < 50 || len(eval) != 40 {
			t.Errorf("%s: %d distinct train prompts, %d eval records", task, len(train), len(eval))
		}
		for _, r := range eval {
			if train[*r.Prompt] {
				t.Errorf("%s: eval prompt %q is also in train", task, *r.Prompt)
			}
		}
	}
}
