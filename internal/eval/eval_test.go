package eval

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/loractl/loractl/internal/backend/cpu"
	"github.com/loractl/loractl/internal/lora"
	"github.com/loractl/loractl/internal/model"
	"github.com/loractl/loractl/internal/refdata"
	"github.com/loractl/loractl/internal/tokenizer"
)

// newRNG returns a generator with a fresh seed, logged so that a failure can be replayed.
func newRNG(t *testing.T) *rand.Rand {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	return rand.New(rand.NewPCG(seed, 11))
}

// corpusWords returns the words of the Moby Dick corpus in the reference folder.
func corpusWords(t *testing.T) []string {
	t.Helper()
	type rec struct {
		Text string `json:"text"`
	}
	var words []string
	for _, r := range refdata.ReadJSONL[rec](t, refdata.Path(t, "data", "moby-dick.jsonl")) {
		words = append(words, strings.Fields(r.Text)...)
		if len(words) > 50000 {
			break
		}
	}
	return words
}

// snippet is a run of 1..maxWords consecutive words from a random place in the corpus.
func snippet(rng *rand.Rand, words []string, maxWords int) string {
	n := 1 + rng.IntN(maxWords)
	i := rng.IntN(len(words) - n)
	return strings.Join(words[i:i+n], " ")
}

// writeJSONL writes records as a JSONL file in a temp folder.
func writeJSONL(t *testing.T, recs []map[string]string) string {
	t.Helper()
	var b strings.Builder
	for _, r := range recs {
		line, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		b.Write(line)
		b.WriteByte('\n')
	}
	p := filepath.Join(t.TempDir(), "data.jsonl")
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// refLoss computes the loss of records on m in float64 from model.ForwardAll's logits, with
// the masks written out here (not data's): prompt/completion records score the completion
// tokens and EOS, text records every token after the first; each sample is cut to seqLen+1
// tokens. It returns the loss sum and the number of scored tokens.
func refLoss(t *testing.T, m *model.Model, tok tokenizer.Encoder, recs []map[string]string, seqLen int) (float64, int) {
	t.Helper()
	V := m.Config().VocabSize
	var sum float64
	n := 0
	for _, r := range recs {
		var full []int
		first := 0 // first position whose next token is scored
		if text, ok := r["text"]; ok {
			full = append(tok.Encode(text, true), tok.EOS())
		} else {
			p := tok.Encode(r["prompt"], true)
			full = append(append(p, tok.Encode(r["completion"], false)...), tok.EOS())
			first = len(p) - 1
		}
		full = full[:min(len(full), seqLen+1)]
		if first >= len(full)-1 {
			continue
		}
		logits, err := m.ForwardAll(full[:len(full)-1])
		if err != nil {
			t.Fatal(err)
		}
		for pos := first; pos < len(full)-1; pos++ {
			row := logits[pos*V : (pos+1)*V]
			mx := math.Inf(-1)
			for _, v := range row {
				mx = math.Max(mx, float64(v))
			}
			var z float64
			for _, v := range row {
				z += math.Exp(float64(v) - mx)
			}
			sum += mx + math.Log(z) - float64(row[full[pos+1]])
			n++
		}
	}
	return sum, n
}

func relDiff(a, b float64) float64 { return math.Abs(a-b) / math.Max(math.Abs(b), 1e-30) }

func loadStories(t *testing.T, merge *lora.Adapter) (*model.Model, tokenizer.Encoder) {
	t.Helper()
	dir := refdata.Stories260K(t)
	m, err := model.Load(dir, cpu.New())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	if merge != nil {
		if err := merge.MergeInto(m); err != nil {
			t.Fatal(err)
		}
	}
	tok, err := tokenizer.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return m, tok
}

// TestLossMatchesReference checks loss, token count and ppl against the float64 reference for
// text and prompt/completion data, with truncation and several batches.
func TestLossMatchesReference(t *testing.T) {
	words := corpusWords(t)
	rng := newRNG(t)
	m, tok := loadStories(t, nil)
	for _, shape := range []string{"text", "prompt_completion"} {
		var recs []map[string]string
		for range 30 {
			if shape == "text" {
				recs = append(recs, map[string]string{"text": snippet(rng, words, 40)})
			} else {
				recs = append(recs, map[string]string{"prompt": snippet(rng, words, 12), "completion": " " + snippet(rng, words, 8)})
			}
		}
		path := writeJSONL(t, recs)
		const seqLen = 40 // some records are longer: truncated as training truncates
		// A long prompt can leave no completion token within seqLen: skipped, as training does.
		rep, err := Run(refdata.Stories260K(t), nil, cpu.New(), Options{Data: path, SeqLen: seqLen, BatchTokens: 3 * seqLen, SkipNoTarget: true})
		if err != nil {
			t.Fatal(err)
		}
		sum, n := refLoss(t, m, tok, recs, seqLen)
		row := rep.Rows[0]
		want := sum / float64(n)
		t.Logf("%s: loss %.6f (reference %.6f), ppl %.3f, %d tokens, %d truncated", shape, row.Loss, want, row.PPL, row.Tokens, rep.Truncated)
		if string(rep.Format) != shape || len(rep.Rows) != 1 || row.Name != "base" || row.Examples+rep.SkippedNoTarget != len(recs) {
			t.Fatalf("%s: report %+v", shape, rep)
		}
		if row.Tokens != n {
			t.Errorf("%s: %d target tokens, the reference masks give %d", shape, row.Tokens, n)
		}
		if d := relDiff(row.Loss, want); d > 1e-5 {
			t.Errorf("%s: loss %.9f, float64 reference %.9f (rel %.2g)", shape, row.Loss, want, d)
		}
		if d := relDiff(row.PPL, math.Exp(want)); d > 1e-5 {
			t.Errorf("%s: ppl %g, exp(reference loss) %g", shape, row.PPL, math.Exp(want))
		}
		if shape == "text" && rep.Truncated == 0 {
			t.Errorf("no record was truncated at seq_len %d; the test does not cover truncation", seqLen)
		}
	}
}

// TestPromptTokensExcluded: prompt/completion records score exactly their completion tokens
// and EOS, while the same text as {"text"} records scores every token after BOS. (That the
// scored tokens are the right ones is TestLossMatchesReference's float64 check.)
func TestPromptTokensExcluded(t *testing.T) {
	words := corpusWords(t)
	rng := newRNG(t)
	_, tok := loadStories(t, nil)
	var recs, asText []map[string]string
	wantTokens, textTokens := 0, 0
	for range 20 {
		p, c := snippet(rng, words, 10), " "+snippet(rng, words, 6)
		recs = append(recs, map[string]string{"prompt": p, "completion": c})
		asText = append(asText, map[string]string{"text": p + c})
		wantTokens += len(tok.Encode(c, false)) + 1 // the completion and EOS
		textTokens += len(tok.Encode(p+c, true))    // every token after BOS, EOS included
	}
	opt := Options{SeqLen: 256}
	opt.Data = writeJSONL(t, recs)
	pc, err := Run(refdata.Stories260K(t), nil, cpu.New(), opt)
	if err != nil {
		t.Fatal(err)
	}
	opt.Data = writeJSONL(t, asText)
	tx, err := Run(refdata.Stories260K(t), nil, cpu.New(), opt)
	if err != nil {
		t.Fatal(err)
	}
	if pc.Rows[0].Tokens != wantTokens {
		t.Errorf("prompt/completion: %d target tokens, the completions and EOS have %d", pc.Rows[0].Tokens, wantTokens)
	}
	if tx.Rows[0].Tokens != textTokens {
		t.Errorf("text: %d target tokens, want every token after BOS: %d", tx.Rows[0].Tokens, textTokens)
	}
}

// greedyCompletions returns prompt/completion records whose completions are m's greedy
// continuations of random prompts, kept only where the completion re-encodes to the same
// number of tokens (so the reference length is the generated length).
func greedyCompletions(t *testing.T, m *model.Model, tok tokenizer.Encoder, rng *rand.Rand, words []string, n int) []map[string]string {
	t.Helper()
	stop := stopIDs(m.Config().EOSTokenIDs, tok.EOS())
	var recs []map[string]string
	for tries := 0; len(recs) < n && tries < 50*n; tries++ {
		p := snippet(rng, words, 8)
		gen, err := model.Generate(m, tok.Encode(p, true), 3+rng.IntN(10), model.NewSampler(0, 0, 1, 0), stop, nil)
		if err != nil {
			t.Fatal(err)
		}
		if k := len(gen); k > 0 && slices.Contains(stop, gen[k-1]) {
			gen = gen[:k-1]
		}
		c := tok.Decode(gen)
		if len(gen) == 0 || strings.TrimSpace(c) == "" || len(tok.Encode(c, false)) != len(gen) {
			continue
		}
		recs = append(recs, map[string]string{"prompt": p, "completion": c})
	}
	if len(recs) < n {
		t.Fatalf("only %d of %d usable greedy completions", len(recs), n)
	}
	return recs
}

func TestExactMatch(t *testing.T) {
	words := corpusWords(t)
	rng := newRNG(t)
	m, tok := loadStories(t, nil)
	recs := greedyCompletions(t, m, tok, rng, words, 12)
	opt := Options{Data: writeJSONL(t, recs), Metrics: []Metric{Loss, Exact}, ExactMargin: 0}
	rep, err := Run(refdata.Stories260K(t), nil, cpu.New(), opt)
	if err != nil {
		t.Fatal(err)
	}
	row := rep.Rows[0]
	if !row.HasExact || row.ExactTotal != len(recs) || row.ExactCorrect != len(recs) {
		t.Fatalf("the model's own greedy completions: %d of %d exact (has %v), want all", row.ExactCorrect, row.ExactTotal, row.HasExact)
	}
	// Perturbed: a character the output cannot start with goes in front of each completion.
	for _, r := range recs {
		r["completion"] = "~" + strings.TrimSpace(r["completion"])
	}
	opt.Data = writeJSONL(t, recs)
	opt.ExactMargin = DefaultExactMargin
	rep, err = Run(refdata.Stories260K(t), nil, cpu.New(), opt)
	if err != nil {
		t.Fatal(err)
	}
	if row := rep.Rows[0]; row.ExactTotal != len(recs) || row.ExactCorrect != 0 {
		t.Fatalf("perturbed completions: %d of %d exact, want 0", row.ExactCorrect, row.ExactTotal)
	}
	// Text data: exact does not apply and says so.
	opt.Data = writeJSONL(t, []map[string]string{{"text": snippet(rng, words, 20)}})
	rep, err = Run(refdata.Stories260K(t), nil, cpu.New(), opt)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Rows[0].HasExact || len(rep.Notes) == 0 || !strings.Contains(rep.Notes[0], "n/a") {
		t.Fatalf("exact on text data: has %v, notes %q", rep.Rows[0].HasExact, rep.Notes)
	}
}

// randomAdapter saves a stories260K adapter with random A and B (so it changes the model).
func randomAdapter(t *testing.T, rng *rand.Rand, targets []string, scaleB float64) (string, *lora.Adapter) {
	t.Helper()
	cfg, err := model.LoadConfig(refdata.Stories260K(t))
	if err != nil {
		t.Fatal(err)
	}
	mods, err := lora.Select(lora.Modules(cfg), targets, nil)
	if err != nil {
		t.Fatal(err)
	}
	a, err := lora.New(lora.Config{R: 4, Alpha: 8, Fingerprint: lora.Fingerprint(cfg)}, mods, lora.InitDefault, rng)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range a.Pairs {
		for i := range p.B {
			p.B[i] = float32(scaleB * rng.NormFloat64())
		}
	}
	dir := filepath.Join(t.TempDir(), "adapter")
	if err := a.Save(dir); err != nil {
		t.Fatal(err)
	}
	return dir, a
}

func TestAdapterRows(t *testing.T) {
	words := corpusWords(t)
	rng := newRNG(t)
	dirA, adA := randomAdapter(t, rng, []string{"all-linear"}, 0.05)
	dirB, _ := randomAdapter(t, rng, []string{"q_proj", "v_proj"}, 0.05)
	merged, tok := loadStories(t, adA)
	recs := greedyCompletions(t, merged, tok, rng, words, 8) // greedy outputs of base+A
	opt := Options{Data: writeJSONL(t, recs), Metrics: []Metric{Loss, PPL, Exact}, ExactMargin: 0}
	st := refdata.Stories260K(t)
	alone, err := Run(st, nil, cpu.New(), opt)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Run(st, []string{dirA, dirB}, cpu.New(), opt)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Rows) != 3 || rep.Rows[0].Name != "base" || rep.Rows[1].Name != dirA || rep.Rows[2].Name != dirB {
		t.Fatalf("rows %+v", rep.Rows)
	}
	b, a := rep.Rows[0], rep.Rows[1]
	if b.Loss != alone.Rows[0].Loss || b.Tokens != alone.Rows[0].Tokens || b.ExactCorrect != alone.Rows[0].ExactCorrect {
		t.Errorf("the base row (loss %v, %d tokens, %d exact) differs from the run without adapters (%v, %d, %d)",
			b.Loss, b.Tokens, b.ExactCorrect, alone.Rows[0].Loss, alone.Rows[0].Tokens, alone.Rows[0].ExactCorrect)
	}
	if a.Loss == b.Loss || rep.Rows[2].Loss == b.Loss || a.Tokens != b.Tokens {
		t.Errorf("adapters do not change the loss: base %v, A %v, B %v", b.Loss, a.Loss, rep.Rows[2].Loss)
	}
	sum, n := refLoss(t, merged, tok, recs, DefaultSeqLen)
	if d := relDiff(a.Loss, sum/float64(n)); d > 1e-5 {
		t.Errorf("adapter row loss %.9f, float64 reference on the merged model %.9f (rel %.2g)", a.Loss, sum/float64(n), d)
	}
	if a.ExactCorrect != len(recs) {
		t.Errorf("adapter A on its own greedy completions: %d of %d exact", a.ExactCorrect, len(recs))
	}
	t.Logf("loss base %.4f, A %.4f, B %.4f; exact base %d/%d, A %d/%d", b.Loss, a.Loss, rep.Rows[2].Loss, b.ExactCorrect, b.ExactTotal, a.ExactCorrect, a.ExactTotal)
}

// TestStreamingHoldsOneBatch: evaluating N and 4N records holds at most one batch of examples
// (a bound set by the batch shape, not by N), and the loss of the repeated file equals the loss
// of one copy.
func TestStreamingHoldsOneBatch(t *testing.T) {
	words := corpusWords(t)
	rng := newRNG(t)
	var recs []map[string]string
	for range 50 {
		recs = append(recs, map[string]string{"text": snippet(rng, words, 15)})
	}
	four := slices.Concat(recs, recs, recs, recs)
	opt := Options{SeqLen: 64, BatchTokens: 128}
	var peaks []int
	var losses []float64
	for _, rs := range [][]map[string]string{recs, four} {
		opt.Data = writeJSONL(t, rs)
		rep, err := Run(refdata.Stories260K(t), nil, cpu.New(), opt)
		if err != nil {
			t.Fatal(err)
		}
		peaks = append(peaks, rep.peakHeld)
		losses = append(losses, rep.Rows[0].Loss)
		if rep.Rows[0].Examples != len(rs) {
			t.Fatalf("%d examples scored of %d", rep.Rows[0].Examples, len(rs))
		}
	}
	// A batch holds 2 rows of 64 positions; each example has at least 2 positions.
	if bound := 2 * 64 / 2; peaks[0] > bound || peaks[1] > bound || peaks[1] < 2 || len(four) <= bound {
		t.Fatalf("peak examples held: %d for N records, %d for 4N", peaks[0], peaks[1])
	}
	if d := relDiff(losses[1], losses[0]); d > 1e-12 {
		t.Fatalf("loss of 4 copies %.12f, of one %.12f", losses[1], losses[0])
	}
}

func TestMaxExamples(t *testing.T) {
	words := corpusWords(t)
	rng := newRNG(t)
	var recs []map[string]string
	for range 9 {
		recs = append(recs, map[string]string{"text": snippet(rng, words, 15)})
	}
	st := refdata.Stories260K(t)
	all, err := Run(st, nil, cpu.New(), Options{Data: writeJSONL(t, recs)})
	if err != nil {
		t.Fatal(err)
	}
	first, err := Run(st, nil, cpu.New(), Options{Data: writeJSONL(t, recs[:4])})
	if err != nil {
		t.Fatal(err)
	}
	capped, err := Run(st, nil, cpu.New(), Options{Data: writeJSONL(t, recs), MaxExamples: 4})
	if err != nil {
		t.Fatal(err)
	}
	if capped.Rows[0].Examples != 4 || capped.Rows[0].Loss != first.Rows[0].Loss || capped.Rows[0].Tokens == all.Rows[0].Tokens {
		t.Fatalf("--max-examples 4: %+v; first 4 records: %+v", capped.Rows[0], first.Rows[0])
	}
}

func TestParseMetrics(t *testing.T) {
	got, err := ParseMetrics([]string{"exact,LOSS", " ppl", "loss"})
	if err != nil || !slices.Equal(got, []Metric{Loss, PPL, Exact}) {
		t.Fatalf("got %v, %v", got, err)
	}
	if got, err := ParseMetrics(nil); err != nil || !slices.Equal(got, DefaultMetrics) {
		t.Fatalf("default: %v, %v", got, err)
	}
	if _, err := ParseMetrics([]string{"loss,bleu"}); err == nil || !strings.Contains(err.Error(), `"bleu"`) {
		t.Fatalf("unknown metric: %v", err)
	}
}

func TestBadInput(t *testing.T) {
	st := refdata.Stories260K(t)
	rng := newRNG(t)
	tmp := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(tmp, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.jsonl", `{"text": "Once upon a time"}`+"\n")
	// A NaN in an adapter's B makes the loss NaN on every record.
	nanDir, nanAd := randomAdapter(t, rng, []string{"q_proj"}, 0.05)
	nanAd.Pairs[0].B[0] = float32(math.NaN())
	if err := nanAd.Save(nanDir); err != nil {
		t.Fatal(err)
	}
	// Adapters for another base: one saved by loractl for the repository's tiny-arith model
	// (its fingerprint differs; the module shapes happen to match), and a PEFT-style one
	// (no fingerprint) whose q_proj has another shape.
	otherCfg, err := model.LoadConfig(filepath.Join("..", "..", "models", "tiny-arith"))
	if err != nil {
		t.Fatal(err)
	}
	mods, _ := lora.Select(lora.Modules(otherCfg), []string{"q_proj"}, nil)
	other, err := lora.New(lora.Config{R: 2, Alpha: 4, Fingerprint: lora.Fingerprint(otherCfg)}, mods, lora.InitDefault, rng)
	if err != nil {
		t.Fatal(err)
	}
	otherDir := filepath.Join(tmp, "other-adapter")
	if err := other.Save(otherDir); err != nil {
		t.Fatal(err)
	}
	mods[0].In, mods[0].Out = 32, 48
	shaped, err := lora.New(lora.Config{R: 2, Alpha: 4}, mods[:1], lora.InitDefault, rng)
	if err != nil {
		t.Fatal(err)
	}
	shapedDir := filepath.Join(tmp, "shaped-adapter")
	if err := shaped.Save(shapedDir); err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("word ", 100)
	for _, c := range []struct {
		name     string
		opt      Options
		adapters []string
		want     []string
	}{
		{"missing file", Options{Data: filepath.Join(tmp, "none.jsonl")}, nil, []string{"none.jsonl", "no such file", "--data"}},
		{"no data", Options{}, nil, []string{"--data"}},
		{"empty file", Options{Data: write("empty.jsonl", "\n\n")}, nil, []string{"empty.jsonl", "no records"}},
		{"bad line", Options{Data: write("bad.jsonl", `{"text": "a"}`+"\n{oops\n")}, nil, []string{"bad.jsonl:2", "fix the line"}},
		{"no target", Options{Data: write("nt.jsonl", `{"prompt": "a", "completion": "b"}`+"\n"+`{"prompt": "`+long+`", "completion": "b"}`+"\n"), SeqLen: 16},
			nil, []string{"nt.jsonl:2", "no target token", "--skip-no-target"}},
		{"all skipped", Options{Data: write("nt2.jsonl", `{"prompt": "`+long+`", "completion": "b"}`+"\n"), SeqLen: 16, SkipNoTarget: true},
			nil, []string{"nt2.jsonl", "no records", "without any target token"}},
		{"other base", Options{Data: good}, []string{otherDir}, []string{"other-adapter", "different base model"}},
		{"other shapes", Options{Data: good}, []string{shapedDir}, []string{"shaped-adapter", "48×32 in the adapter", "another base model"}},
		{"no adapter files", Options{Data: good}, []string{tmp}, []string{tmp, "adapter_config.json"}},
		{"nan", Options{Data: write("nan.jsonl", `{"text": "Once upon a time"}`+"\n"+`{"text": "Lily and Tom"}`+"\n")}, []string{nanDir}, []string{"nan.jsonl:1", "NaN", nanDir}},
		{"seq len", Options{Data: good, SeqLen: 100000}, nil, []string{"--seq-len", "max_position_embeddings"}},
		{"unknown metric", Options{Data: good, Metrics: []Metric{"bleu"}}, nil, []string{"bleu"}},
	} {
		_, err := Run(st, c.adapters, cpu.New(), c.opt)
		if err == nil {
			t.Errorf("%s: no error", c.name)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not mention %q", c.name, err, w)
			}
		}
	}
	// Skipping the record without targets scores the other one.
	rep, err := Run(st, nil, cpu.New(), Options{Data: filepath.Join(tmp, "nt.jsonl"), SeqLen: 16, SkipNoTarget: true})
	if err != nil || rep.Rows[0].Examples != 1 || rep.SkippedNoTarget != 1 {
		t.Fatalf("--skip-no-target: %v %+v", err, rep)
	}
}
