package cli

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loractl/loractl/internal/lora"
	"github.com/loractl/loractl/internal/model"
)

// evalData writes n random records of the given shape ("text" or "pc") made of story words.
func evalData(t *testing.T, rng *rand.Rand, shape string, n int) string {
	t.Helper()
	words := []string{"Lily", "Tom", "dog", "ball", "park", "mom", "tree", "cat", "happy", "big", "red", "ran", "saw", "the", "a", "and", "was", "to"}
	phrase := func(k int) string {
		var w []string
		for range 1 + rng.IntN(k) {
			w = append(w, words[rng.IntN(len(words))])
		}
		return strings.Join(w, " ")
	}
	var b strings.Builder
	for range n {
		var rec map[string]string
		if shape == "text" {
			rec = map[string]string{"text": phrase(20)}
		} else {
			rec = map[string]string{"prompt": phrase(8), "completion": " " + phrase(5)}
		}
		line, _ := json.Marshal(rec)
		b.Write(line)
		b.WriteByte('\n')
	}
	p := filepath.Join(t.TempDir(), shape+".jsonl")
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// evalAdapter saves a stories260K adapter with random non-zero B into a new folder.
func evalAdapter(t *testing.T, rng *rand.Rand) string {
	t.Helper()
	cfg, err := model.LoadConfig(stories(t))
	if err != nil {
		t.Fatal(err)
	}
	mods, err := lora.Select(lora.Modules(cfg), []string{"q_proj", "v_proj", "down_proj"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	a, err := lora.New(lora.Config{R: 2, Alpha: 4, Fingerprint: lora.Fingerprint(cfg)}, mods, lora.InitDefault, rng)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range a.Pairs {
		for i := range p.B {
			p.B[i] = float32(0.1 * rng.NormFloat64())
		}
	}
	dir := filepath.Join(t.TempDir(), "adapter")
	if err := a.Save(dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

type evalJSON struct {
	Model   string `json:"model"`
	Data    string `json:"data"`
	Format  string `json:"format"`
	Records int    `json:"records"`
	Rows    []struct {
		Model        string   `json:"model"`
		Examples     int      `json:"examples"`
		Tokens       int      `json:"tokens"`
		Positions    int      `json:"positions"`
		Loss         *float64 `json:"loss"`
		PPL          *float64 `json:"ppl"`
		Exact        *float64 `json:"exact"`
		ExactCorrect *int     `json:"exact_correct"`
		ExactTotal   *int     `json:"exact_total"`
		Seconds      *float64 `json:"elapsed_seconds"`
	} `json:"rows"`
	Notes   []string `json:"notes"`
	Seconds *float64 `json:"elapsed_seconds"`
}

func TestEvalTableAndJSON(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	st := stories(t)
	ad := evalAdapter(t, rng)
	pc := evalData(t, rng, "pc", 15)

	code, out, stderr := run(t, "", "eval", "--model", st, "--adapter", ad, "--data", pc, "--metrics", "loss,ppl,exact")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) < 3 || strings.Join(strings.Fields(lines[0]), " ") != "model examples tokens loss ppl exact" {
		t.Fatalf("table:\n%s", out)
	}
	base, adRow := strings.Fields(lines[1]), strings.Fields(lines[2])
	if base[0] != "base" || adRow[0] != ad || base[1] != "15" || adRow[1] != "15" || base[2] != adRow[2] || base[3] == adRow[3] {
		t.Fatalf("rows:\n%s", out)
	}
	if strings.Contains(stderr, "\r") {
		t.Errorf("a progress bar was drawn on a stderr that is not a terminal: %q", stderr)
	}

	code, js, stderr := run(t, "", "eval", "--model", st, "--adapter", ad, "--data", pc, "--metrics", "loss", "--metrics", "ppl,exact", "--json")
	if code != 0 {
		t.Fatalf("--json: exit %d: %s", code, stderr)
	}
	var doc evalJSON
	if err := json.Unmarshal([]byte(js), &doc); err != nil {
		t.Fatalf("--json output is not one JSON document: %v\n%s", err, js)
	}
	if doc.Model != st || doc.Data != pc || doc.Format != "prompt_completion" || doc.Records != 15 || len(doc.Rows) != 2 || doc.Seconds == nil {
		t.Fatalf("json: %s", js)
	}
	for i, r := range doc.Rows {
		if r.Loss == nil || r.PPL == nil || r.Exact == nil || r.ExactTotal == nil || *r.ExactTotal != 15 || r.Seconds == nil || r.Positions <= r.Tokens {
			t.Fatalf("json row %d: %s", i, js)
		}
		// The table shows the same numbers.
		fields := strings.Fields(lines[1+i])
		if got := fmt.Sprintf("%.4f", *r.Loss); got != fields[3] || r.Model != fields[0] || fmt.Sprint(r.Tokens) != fields[2] {
			t.Errorf("row %d: json loss %s, %d tokens; table %v", i, got, r.Tokens, fields)
		}
		if want := fmt.Sprintf("%.1f%% (%d/%d)", 100**r.Exact, *r.ExactCorrect, *r.ExactTotal); want != fields[5]+" "+fields[6] {
			t.Errorf("row %d: json exact %s, table %v", i, want, fields)
		}
	}

	// Text data: exact is n/a, with a note, in both outputs.
	text := evalData(t, rng, "text", 6)
	code, out, stderr = run(t, "", "eval", "--model", st, "--data", text, "--metrics", "exact,loss")
	if code != 0 || !strings.Contains(out, "n/a") || !strings.Contains(out, "note: exact: n/a") {
		t.Fatalf("exact on text data: exit %d\n%s%s", code, out, stderr)
	}
	code, js, _ = run(t, "", "eval", "--model", st, "--data", text, "--metrics", "exact,loss", "--json")
	doc = evalJSON{}
	if err := json.Unmarshal([]byte(js), &doc); code != 0 || err != nil || doc.Rows[0].Exact != nil || doc.Rows[0].Loss == nil || len(doc.Notes) == 0 {
		t.Fatalf("json exact on text data: exit %d, %v\n%s", code, err, js)
	}
}

func TestEvalConfigFile(t *testing.T) {
	rng := rand.New(rand.NewPCG(rand.Uint64(), 2))
	st := stories(t)
	ad := evalAdapter(t, rng)
	pc := evalData(t, rng, "pc", 8)
	cfg := filepath.Join(t.TempDir(), "eval.yaml")
	yaml := fmt.Sprintf("model: %s\nadapter:\n  - %s\ndata: %s\nmetrics: [loss, exact]\nseq-len: 32\nexact-margin: 2\njson: true\n", st, ad, pc)
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	code, fromFile, stderr := run(t, "", "eval", "--config", cfg)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	code, fromFlags, stderr := run(t, "", "eval", "--model", st, "--adapter", ad, "--data", pc, "--metrics", "loss,exact", "--seq-len", "32", "--exact-margin", "2", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var a, b evalJSON
	if json.Unmarshal([]byte(fromFile), &a) != nil || json.Unmarshal([]byte(fromFlags), &b) != nil || len(a.Rows) != 2 || len(b.Rows) != 2 {
		t.Fatalf("outputs:\n%s\n%s", fromFile, fromFlags)
	}
	for i := range a.Rows {
		if *a.Rows[i].Loss != *b.Rows[i].Loss || *a.Rows[i].ExactCorrect != *b.Rows[i].ExactCorrect {
			t.Errorf("row %d: --config gives %s, flags give %s", i, fromFile, fromFlags)
		}
	}
	// An unknown key in the file is an error.
	if err := os.WriteFile(cfg, []byte("data: x.jsonl\nbogus: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := run(t, "", "eval", "--config", cfg); code == 0 || !strings.Contains(stderr, "bogus") {
		t.Errorf("unknown config key: exit %d, %s", code, stderr)
	}
}

func TestEvalExitCodes(t *testing.T) {
	rng := rand.New(rand.NewPCG(rand.Uint64(), 3))
	st := stories(t)
	good := evalData(t, rng, "text", 3)
	missing := filepath.Join(t.TempDir(), "missing.jsonl")
	empty := filepath.Join(t.TempDir(), "empty.jsonl")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"eval", "--model", st}, 2, "--data"},
		{[]string{"eval", "--model", st, "--data", good, "--metrics", "loss,bleu"}, 2, "bleu"},
		{[]string{"eval", "--model", st, "--data", good, "extra"}, 2, "no arguments"},
		{[]string{"eval", "--model", st, "--data", good, "--batch-tokens", "0"}, 2, "--batch-tokens"},
		{[]string{"eval", "--model", st, "--data", good, "--max-examples", "-1"}, 2, "--max-examples"},
		{[]string{"eval", "--model", st, "--data", good, "--format", "csv"}, 2, "--format"},
		{[]string{"eval", "--model", st, "--data", good, "--no-such-flag"}, 2, "no-such-flag"},
		{[]string{"eval", "--model", st, "--data", good, "--device", "tpu"}, 2, "--device"},
		{[]string{"eval", "--model", st, "--data", missing}, 1, "missing.jsonl"},
		{[]string{"eval", "--model", st, "--data", empty}, 1, "no records"},
		{[]string{"eval", "--model", st, "--data", good, "--adapter", t.TempDir()}, 1, "adapter_config.json"},
		{[]string{"eval", "--model", st, "--data", good, "--seq-len", "4096"}, 1, "max_position_embeddings"},
	} {
		code, _, stderr := run(t, "", c.args...)
		stderr = withoutFallbackNote(stderr)
		if code != c.code || !strings.Contains(stderr, c.want) {
			t.Errorf("%v: exit %d (want %d), stderr %q (want %q)", c.args[3:], code, c.code, stderr, c.want)
		}
		if strings.Contains(stderr, "panic") || strings.Count(strings.TrimSpace(stderr), "\n") > 0 {
			t.Errorf("%v: stderr is not one error line: %q", c.args[3:], stderr)
		}
	}
}
