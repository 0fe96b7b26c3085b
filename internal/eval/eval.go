// Package eval scores a base model, and the base with each of several LoRA adapters, on a JSONL
// data file: the token-weighted loss and perplexity under training's loss masks, and the exact
// match of greedy completions for prompt/completion data. It is the logic behind `loractl eval`.
//
// # Loss
//
// Records become Examples through data.Reader, which runs data's own code (the shape detection,
// tokenisation, chat template and masks of training): loss on the completion (and EOS) of
// {"prompt","completion"} records, on the assistant turns of {"messages"} records, on every
// token of {"text"} records. A record longer than SeqLen+1 tokens is cut to SeqLen positions,
// as training cuts it (the rest is not scored; Report.Truncated counts such records).
//
// The loss runs through engine.Loss, the pass training's evaluation uses, on batches laid out as
// data.EvalBatches lays them out with packing (rows of SeqLen positions, examples packed in file
// order, attention kept within each example): an adapter is applied unmerged, y = W0·x +
// s·B·(A·x), exactly as in training, so the loss of an adapter saved at step N equals training's
// eval loss at step N on the same examples. The base row runs the same pass with an adapter
// whose B is zero, which adds exactly nothing. Loss = Σ per-token loss / number of target tokens
// over the whole file (a token-weighted mean, summed in float64); ppl = exp(loss).
//
// # Exact match
//
// For each prompt/completion record, the prompt (tokenised as training does, with BOS) is
// continued greedily with a KV cache (model.Generate) for at most len(completion tokens) +
// ExactMargin new tokens, stopping at an EOS token (not part of the output). The output is
// decoded and compared with the record's completion after strings.TrimSpace on both; no other
// normalisation. For adapters, generation runs on a fresh float32 copy of the base with the
// adapter merged in (W0 + s·B·A), freed after its row. Records whose prompt leaves no room in
// the context count as misses (Row.ExactNoRoom).
//
// # Memory
//
// The file is read one line at a time, once per row. The evaluator holds one batch of
// B = max(1, BatchTokens/SeqLen) rows of SeqLen positions (its tokens, targets, positions and
// segments and one entry per example in it), one record, and the engine's buffers for that
// batch shape; none of it grows with the number of records.
package eval

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/loractl/loractl/internal/backend"
	"github.com/loractl/loractl/internal/chat"
	"github.com/loractl/loractl/internal/data"
	"github.com/loractl/loractl/internal/engine"
	"github.com/loractl/loractl/internal/lora"
	"github.com/loractl/loractl/internal/model"
	"github.com/loractl/loractl/internal/tokenizer"
)

// Metric names one score.
type Metric string

// The metrics.
const (
	Loss  Metric = "loss"  // mean loss per target token (nats)
	PPL   Metric = "ppl"   // exp(loss)
	Exact Metric = "exact" // exact-match rate of greedy completions
)

// AllMetrics lists the metrics in the order tables show them.
var AllMetrics = []Metric{Loss, PPL, Exact}

// DefaultMetrics are the metrics when none are asked for.
var DefaultMetrics = []Metric{Loss, PPL}

// Defaults of Options.
const (
	DefaultSeqLen      = 256 // training's default data.seq_len
	DefaultBatchTokens = 4096
	DefaultExactMargin = 8
)

// ParseMetrics reads metric names, each item a name or a comma-separated list. The result is
// in AllMetrics order without repeats; no names gives DefaultMetrics.
func ParseMetrics(items []string) ([]Metric, error) {
	want := map[Metric]bool{}
	for _, it := range items {
		for _, name := range strings.Split(it, ",") {
			name = strings.ToLower(strings.TrimSpace(name))
			if name == "" {
				continue
			}
			if !slices.Contains(AllMetrics, Metric(name)) {
				return nil, fmt.Errorf("unknown metric %q; the metrics are loss, ppl and exact (e.g. --metrics loss,ppl,exact)", name)
			}
			want[Metric(name)] = true
		}
	}
	if len(want) == 0 {
		return slices.Clone(DefaultMetrics), nil
	}
	var out []Metric
	for _, m := range AllMetrics {
		if want[m] {
			out = append(out, m)
		}
	}
	return out, nil
}

// Progress receives how far a row's pass over the data file is, in bytes.
type Progress interface {
	Begin(row string, totalBytes int64)
	Update(doneBytes int64)
	End()
}

// Options controls an evaluation.
type Options struct {
	Data         string      // JSONL file
	Format       data.Format // "" or auto: detect from the first record
	SeqLen       int         // positions per example (longer records are cut); 0: min(DefaultSeqLen, max_position_embeddings)
	BatchTokens  int         // positions per forward batch (at least one row of SeqLen); 0: DefaultBatchTokens
	MaxExamples  int         // score only the first N examples; 0: all
	Metrics      []Metric    // nil: DefaultMetrics
	ExactMargin  int         // extra new tokens beyond the reference length for exact
	SkipNoTarget bool        // skip records without any target token instead of failing
	Progress     Progress    // nil: none
	// Ranks evaluates each adapter truncated to each of these ranks (DyLoRA's nested
	// sub-adapters; the adapter must have been trained with lora.method dylora), one row per
	// adapter and rank; nil: each adapter whole.
	Ranks []int
}

// Row is the result for one model: the base or the base with one adapter.
type Row struct {
	Name      string // "base" or the adapter folder
	Adapter   string // the adapter folder; "" for the base
	Rank      int    // the rank the adapter was truncated to (Options.Ranks); 0: whole
	Examples  int    // records scored
	Positions int    // input positions run through the model
	Tokens    int    // target tokens in the loss
	Loss      float64
	PPL       float64
	// HasLoss says whether Loss and PPL were computed (loss or ppl asked for).
	HasLoss bool
	// HasExact says whether the exact-match rate applies (asked for, prompt/completion data).
	HasExact     bool
	ExactCorrect int // completions that matched
	ExactTotal   int // completions scored
	ExactNoRoom  int // of ExactTotal: prompts that left no room in the context (misses)
	LossSeconds  float64
	ExactSeconds float64
	Seconds      float64 // the whole pass over the data for this row
}

// ExactRate returns ExactCorrect/ExactTotal (NaN when nothing was scored).
func (r Row) ExactRate() float64 {
	if r.ExactTotal == 0 {
		return math.NaN()
	}
	return float64(r.ExactCorrect) / float64(r.ExactTotal)
}

// PositionsPerSecond is the loss forward's throughput: input positions per second.
func (r Row) PositionsPerSecond() float64 {
	if r.LossSeconds <= 0 {
		return 0
	}
	return float64(r.Positions) / r.LossSeconds
}

// Report is the result of Run.
type Report struct {
	Model           string
	Data            string
	Format          data.Format
	SeqLen          int
	BatchRows       int // rows of SeqLen positions per forward batch
	Metrics         []Metric
	Records         int // non-empty lines read (in one row's pass)
	Truncated       int // records cut to SeqLen positions
	SkippedNoTarget int // records without a target token, skipped (SkipNoTarget)
	Rows            []Row
	Notes           []string
	Seconds         float64

	peakHeld int // most examples one batch held (the streaming test reads it)
}

// Run evaluates the model folder modelDir, alone and with each adapter folder, on opt.Data,
// with the model on be (which must implement backend.Trainer). The rows are "base" first, then
// the adapters in order.
func Run(modelDir string, adapters []string, be backend.Backend, opt Options) (*Report, error) {
	start := time.Now()
	if opt.Metrics == nil {
		opt.Metrics = slices.Clone(DefaultMetrics)
	}
	if len(opt.Metrics) == 0 {
		return nil, errors.New("eval: no metrics to compute; ask for loss, ppl or exact")
	}
	for _, m := range opt.Metrics {
		if !slices.Contains(AllMetrics, m) {
			return nil, fmt.Errorf("eval: unknown metric %q; the metrics are loss, ppl and exact", m)
		}
	}
	switch {
	case opt.SeqLen < 0:
		return nil, fmt.Errorf("eval: the sequence length must be positive, got %d", opt.SeqLen)
	case opt.BatchTokens < 0:
		return nil, fmt.Errorf("eval: the batch size in tokens must be positive, got %d", opt.BatchTokens)
	case opt.MaxExamples < 0:
		return nil, fmt.Errorf("eval: the maximum number of examples must not be negative, got %d", opt.MaxExamples)
	case opt.ExactMargin < 0:
		return nil, fmt.Errorf("eval: the exact-match margin must not be negative, got %d", opt.ExactMargin)
	}
	if opt.Data == "" {
		return nil, errors.New("eval: no data file; pass --data with a JSONL file of {\"text\"}, {\"prompt\",\"completion\"} or {\"messages\"} records")
	}
	st, err := os.Stat(opt.Data)
	if err != nil {
		return nil, fmt.Errorf("data %s: no such file; pass --data with a JSONL file", opt.Data)
	}
	if st.IsDir() {
		return nil, fmt.Errorf("data %s: is a directory; pass --data with a JSONL file", opt.Data)
	}
	if _, ok := be.(backend.Trainer); !ok {
		return nil, fmt.Errorf("eval: the %s backend has no loss op (backend.Trainer); use --device cpu", be.Name())
	}

	tok, err := tokenizer.Open(modelDir)
	if err != nil {
		return nil, err
	}
	// The loss runs on the base as stored (BF16 stays BF16: the same results as widening it).
	base, err := model.LoadWith(modelDir, be, model.LoadOptions{KeepBF16: true})
	if err != nil {
		return nil, err
	}
	defer base.Close()
	cfg := base.Config()
	if tok.VocabSize() > cfg.VocabSize {
		return nil, fmt.Errorf("%s: the tokenizer has %d tokens but the model's vocab_size is %d; the tokenizer files belong to another model", modelDir, tok.VocabSize(), cfg.VocabSize)
	}
	if opt.SeqLen == 0 {
		opt.SeqLen = min(DefaultSeqLen, cfg.MaxPositionEmbeddings)
	}
	if opt.SeqLen > cfg.MaxPositionEmbeddings {
		return nil, fmt.Errorf("eval: --seq-len %d is longer than the model's max_position_embeddings %d (%s); lower --seq-len", opt.SeqLen, cfg.MaxPositionEmbeddings, cfg.Path)
	}
	if cfg.SlidingWindow > 0 && opt.SeqLen > cfg.SlidingWindow {
		return nil, fmt.Errorf("eval: --seq-len %d is longer than the model's sliding_window %d (%s), which is not implemented; lower --seq-len", opt.SeqLen, cfg.SlidingWindow, cfg.Path)
	}
	if opt.BatchTokens == 0 {
		opt.BatchTokens = DefaultBatchTokens
	}

	// Every adapter is loaded and checked before any work, so a wrong one fails at once.
	ads := make([]*lora.Adapter, len(adapters))
	for i, dir := range adapters {
		a, err := lora.LoadFor(dir, cfg, "evaluate it with --model set to its own base")
		if err != nil {
			return nil, err
		}
		ads[i] = a
	}

	dopt := data.Options{Format: opt.Format, SeqLen: opt.SeqLen}
	if opt.Format == data.FormatMessages || opt.Format == data.FormatAuto || opt.Format == "" {
		if tpl, err := chat.Load(modelDir); err == nil {
			dopt.Chat = tpl
		} else if opt.Format == data.FormatMessages {
			return nil, err
		}
	}

	r := &runner{modelDir: modelDir, base: base, tok: tok, opt: opt, dopt: dopt, size: st.Size(),
		rows: max(1, opt.BatchTokens/opt.SeqLen), stop: stopIDs(cfg.EOSTokenIDs, tok.EOS())}
	for _, m := range opt.Metrics {
		r.loss = r.loss || m == Loss || m == PPL
		r.exact = r.exact || m == Exact
	}
	rep := &Report{Model: modelDir, Data: opt.Data, SeqLen: opt.SeqLen, BatchRows: r.rows, Metrics: opt.Metrics}
	row, err := r.pass("", nil, rep)
	if err != nil {
		return nil, err
	}
	rep.Rows = append(rep.Rows, row)
	for i, dir := range adapters {
		variants, err := truncations(dir, ads[i], opt.Ranks)
		if err != nil {
			return nil, err
		}
		for _, v := range variants {
			row, err := r.pass(dir, v.a, rep)
			if err != nil {
				return nil, err
			}
			if v.rank > 0 {
				row.Name, row.Rank = fmt.Sprintf("%s (r %d)", row.Name, v.rank), v.rank
			}
			rep.Rows = append(rep.Rows, row)
		}
	}
	if r.exact && rep.Format != data.FormatPromptCompletion {
		rep.Notes = append(rep.Notes, fmt.Sprintf("exact: n/a: %s holds %s records; exact match needs {\"prompt\",\"completion\"} records", opt.Data, rep.Format))
	}
	if rep.Truncated > 0 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("%d of %d records were longer than --seq-len %d positions and were cut to it, as training cuts them (raise --seq-len to score them whole)", rep.Truncated, rep.Records, opt.SeqLen))
	}
	if rep.SkippedNoTarget > 0 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("%d records without any target token were skipped", rep.SkippedNoTarget))
	}
	if n := rep.Rows[0].ExactNoRoom; n > 0 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("exact: %d prompts left no room for a completion in the model's context (max_position_embeddings %d) and count as misses", n, cfg.MaxPositionEmbeddings))
	}
	rep.Seconds = time.Since(start).Seconds()
	return rep, nil
}

// runner is the state shared by the rows of one Run.
type runner struct {
	modelDir    string
	base        *model.Model
	tok         tokenizer.Encoder
	opt         Options
	dopt        data.Options
	size        int64 // bytes of the data file
	rows        int   // B
	stop        []int
	loss, exact bool
}

// segment is one example inside the current batch.
type segment struct {
	off, n int // first index in the batch (row·T + offset) and length
	line   int
}

// batch is the batch being filled: B rows of T positions, with its examples.
type batch struct {
	b    engine.Batch
	segs []segment
	r    int // current row
	off  int // next free position of the row
	seg  int // next segment id of the row
}

func newBatch(B, T int) *batch {
	bt := &batch{b: engine.Batch{B: B, T: T, Tokens: make([]int, B*T), Targets: make([]int, B*T),
		Positions: make([]int, B*T), Segments: make([]int, B*T)}}
	bt.reset()
	return bt
}

// reset empties the batch to all padding.
func (bt *batch) reset() {
	for i := range bt.b.Tokens {
		bt.b.Tokens[i], bt.b.Targets[i], bt.b.Positions[i], bt.b.Segments[i] = 0, data.Ignore, 0, -1
	}
	bt.segs = bt.segs[:0]
	bt.r, bt.off, bt.seg = 0, 0, 0
}

// fits reports whether an example of n positions goes into the batch (packing, as
// data.EvalBatches: into the current row while it fits, else the next row).
func (bt *batch) fits(n int) bool {
	return bt.off+n <= bt.b.T || bt.r+1 < bt.b.B
}

// put places ex; the caller checked fits.
func (bt *batch) put(ex data.Example, line int) {
	if bt.off+len(ex.IDs) > bt.b.T {
		bt.r, bt.off, bt.seg = bt.r+1, 0, 0
	}
	base := bt.r*bt.b.T + bt.off
	for t := range ex.IDs {
		bt.b.Tokens[base+t] = ex.IDs[t]
		bt.b.Targets[base+t] = ex.Labels[t]
		bt.b.Positions[base+t] = t
		bt.b.Segments[base+t] = bt.seg
	}
	bt.segs = append(bt.segs, segment{off: base, n: len(ex.IDs), line: line})
	bt.off += len(ex.IDs)
	bt.seg++
}

// pass streams the data file once for one row: adapter a (nil: the base) in folder dir.
func (r *runner) pass(dir string, a *lora.Adapter, rep *Report) (Row, error) {
	start := time.Now()
	row := Row{Name: "base", Adapter: dir, HasLoss: r.loss}
	if a != nil {
		row.Name = dir
	}
	var eng *engine.Engine
	if r.loss {
		la := a
		if la == nil {
			var err error
			if la, err = zeroAdapter(r.base.Config()); err != nil {
				return row, err
			}
		}
		var err error
		eng, err = engine.New(r.base, la, engine.Options{Method: engine.MethodLoRA, GradCheckpointing: true})
		if err != nil {
			return row, fmt.Errorf("%s: %w", row.Name, err)
		}
		defer eng.Close()
	}
	gen := r.base
	if r.exact && a != nil {
		// Generation has no unmerged LoRA path: merge into a fresh float32 copy of the base.
		m, err := model.LoadWith(r.modelDir, r.base.Backend(), model.LoadOptions{})
		if err != nil {
			return row, err
		}
		defer m.Close()
		if err := a.MergeInto(m); err != nil {
			return row, fmt.Errorf("%s: %w", dir, err)
		}
		gen = m
	}

	rd, err := data.OpenReader(r.opt.Data, r.tok, r.dopt)
	if err != nil {
		return row, err
	}
	defer rd.Close()
	if p := r.opt.Progress; p != nil {
		p.Begin(row.Name, r.size)
		defer p.End()
	}

	var sum float64
	bt := newBatch(r.rows, r.opt.SeqLen)
	flush := func() error {
		if len(bt.segs) == 0 {
			return nil
		}
		rep.peakHeld = max(rep.peakHeld, len(bt.segs))
		// A partly filled batch runs only its used rows (the engine computes padding rows too).
		b := bt.b
		if used := bt.r + 1; used < b.B {
			k := used * b.T
			b.B, b.Tokens, b.Targets, b.Positions, b.Segments = used, b.Tokens[:k], b.Targets[:k], b.Positions[:k], b.Segments[:k]
		}
		t0 := time.Now()
		s, n, err := eng.Loss(b)
		row.LossSeconds += time.Since(t0).Seconds()
		if err != nil {
			return fmt.Errorf("%s: %s: %w", r.opt.Data, row.Name, err)
		}
		if math.IsNaN(s) || math.IsInf(s, 0) {
			return r.nonFinite(eng, bt, row.Name)
		}
		sum += s
		row.Tokens += n
		bt.reset()
		return nil
	}
	skipped := 0
	for {
		if r.opt.MaxExamples > 0 && row.Examples == r.opt.MaxExamples {
			break
		}
		rec, err := rd.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return row, fmt.Errorf("%v (fix the line, or check --format)", err)
		}
		if rec.Trained == 0 {
			if r.opt.SkipNoTarget {
				skipped++
				continue
			}
			return row, fmt.Errorf("%s:%d: the record has no target token (%s); give it one, raise --seq-len if truncation cut it, or pass --skip-no-target to skip such records as training does",
				r.opt.Data, rec.Line, noTargetReason(rd.Stats().Format, rec, r.opt.SeqLen))
		}
		row.Examples++
		row.Positions += len(rec.IDs)
		if r.exact && rec.HasCompletion {
			t0 := time.Now()
			ok, room, err := r.exactOne(gen, rec)
			row.ExactSeconds += time.Since(t0).Seconds()
			if err != nil {
				return row, fmt.Errorf("%s:%d: exact: %w", r.opt.Data, rec.Line, err)
			}
			row.ExactTotal++
			if ok {
				row.ExactCorrect++
			}
			if !room {
				row.ExactNoRoom++
			}
		}
		if eng != nil {
			if !bt.fits(len(rec.IDs)) {
				if err := flush(); err != nil {
					return row, err
				}
			}
			bt.put(rec.Example, rec.Line)
		}
		if p := r.opt.Progress; p != nil {
			p.Update(rd.Offset())
		}
	}
	if eng != nil {
		if err := flush(); err != nil {
			return row, err
		}
	}
	st := rd.Stats()
	rep.Format, rep.Records, rep.Truncated, rep.SkippedNoTarget = st.Format, st.Lines, st.Truncated, skipped
	if row.Examples == 0 {
		why := fmt.Sprintf("%d non-empty lines", st.Lines)
		if skipped > 0 {
			why += fmt.Sprintf(", %d of them without any target token", skipped)
		}
		return row, fmt.Errorf("%s: no records to evaluate (%s); give a JSONL file of {\"text\"}, {\"prompt\",\"completion\"} or {\"messages\"} records", r.opt.Data, why)
	}
	if r.loss {
		row.Loss = sum / float64(row.Tokens)
		row.PPL = math.Exp(row.Loss)
	}
	row.HasExact = r.exact && st.Format == data.FormatPromptCompletion
	row.Seconds = time.Since(start).Seconds()
	return row, nil
}

// nonFinite runs each example of a batch whose loss sum is not finite alone and names the first
// whose loss is not finite.
func (r *runner) nonFinite(eng *engine.Engine, bt *batch, name string) error {
	T := bt.b.T
	one := engine.Batch{B: 1, T: T, Tokens: make([]int, T), Targets: make([]int, T), Positions: make([]int, T), Segments: make([]int, T)}
	for _, sg := range bt.segs {
		for i := range T {
			one.Tokens[i], one.Targets[i], one.Positions[i], one.Segments[i] = 0, data.Ignore, 0, -1
		}
		copy(one.Tokens, bt.b.Tokens[sg.off:sg.off+sg.n])
		copy(one.Targets, bt.b.Targets[sg.off:sg.off+sg.n])
		copy(one.Positions, bt.b.Positions[sg.off:sg.off+sg.n])
		for i := range sg.n {
			one.Segments[i] = 0
		}
		s, _, err := eng.Loss(one)
		if err != nil {
			return err
		}
		if math.IsNaN(s) || math.IsInf(s, 0) {
			return fmt.Errorf("%s:%d: the loss of %s is %v on this record: the model's outputs are not finite; check the weights of the model and adapter for NaN or Inf (e.g. a diverged training run)", r.opt.Data, sg.line, name, s)
		}
	}
	return fmt.Errorf("%s: %s: the loss of a batch is not finite, but of no record alone; check the model and adapter weights for NaN or Inf", r.opt.Data, name)
}

// noTargetReason says why a record has no target token.
func noTargetReason(f data.Format, rec data.Record, seqLen int) string {
	switch {
	case rec.Truncated:
		return fmt.Sprintf("its scored part lies beyond the first %d positions", seqLen)
	case f == data.FormatMessages:
		return "no assistant turn"
	case f == data.FormatPromptCompletion:
		return "an empty completion and no EOS token"
	}
	return "no token to predict"
}

// exactOne generates greedily after rec's prompt and reports whether the output equals its
// completion (whitespace-trimmed), and whether the prompt left room for any new token.
func (r *runner) exactOne(m *model.Model, rec data.Record) (ok, room bool, err error) {
	cfg := m.Config()
	prompt := r.tok.Encode(rec.Prompt, true)
	if len(prompt) == 0 {
		if r.tok.BOS() < 0 {
			return false, true, errors.New("the prompt is empty and the tokenizer has no BOS token to start from")
		}
		prompt = []int{r.tok.BOS()}
	}
	want := strings.TrimSpace(rec.Completion)
	n := len(r.tok.Encode(rec.Completion, false)) + r.opt.ExactMargin
	limit := cfg.MaxPositionEmbeddings
	if cfg.SlidingWindow > 0 {
		limit = min(limit, cfg.SlidingWindow)
	}
	if len(prompt) >= limit {
		return false, false, nil
	}
	n = min(n, limit-len(prompt))
	gen, err := model.Generate(m, prompt, n, model.NewSampler(0, 0, 1, 0), r.stop, nil)
	if err != nil {
		return false, true, err
	}
	if k := len(gen); k > 0 && slices.Contains(r.stop, gen[k-1]) {
		gen = gen[:k-1]
	}
	return strings.TrimSpace(r.tok.Decode(gen)) == want, true, nil
}

// zeroAdapter is a rank-1 adapter with B = 0 on one module: running the engine with it adds
// exactly 0 to one Linear's output, so the loss is the base model's.
func zeroAdapter(c *model.Config) (*lora.Adapter, error) {
	mods := lora.Modules(c)
	if len(mods) == 0 {
		return nil, fmt.Errorf("eval: %s has no Linear layer to run", c.Path)
	}
	return lora.New(lora.Config{R: 1, Alpha: 1}, mods[:1], lora.InitDefault, rand.New(rand.NewPCG(1, 2)))
}

// stopIDs merges the model's EOS ids with the tokenizer's.
func stopIDs(ids []int, tokEOS int) []int {
	out := slices.Clone(ids)
	if tokEOS >= 0 && !slices.Contains(out, tokEOS) {
		out = append(out, tokEOS)
	}
	return out
}

// jsonRow is a Row as the JSON report writes it; non-finite numbers and n/a are null.
type jsonRow struct {
	Model        string   `json:"model"`
	Adapter      string   `json:"adapter,omitempty"`
	Rank         int      `json:"rank,omitempty"`
	Examples     int      `json:"examples"`
	Positions    int      `json:"positions"`
	Tokens       int      `json:"tokens"`
	Loss         *float64 `json:"loss"`
	PPL          *float64 `json:"ppl"`
	Exact        *float64 `json:"exact"`
	ExactCorrect *int     `json:"exact_correct,omitempty"`
	ExactTotal   *int     `json:"exact_total,omitempty"`
	LossSeconds  float64  `json:"loss_seconds"`
	ExactSeconds float64  `json:"exact_seconds"`
	PositionsPS  float64  `json:"positions_per_second"`
	Seconds      float64  `json:"elapsed_seconds"`
}

// jsonReport is the JSON document of a Report.
type jsonReport struct {
	Model           string    `json:"model"`
	Data            string    `json:"data"`
	Format          string    `json:"format"`
	SeqLen          int       `json:"seq_len"`
	BatchRows       int       `json:"batch_rows"`
	Metrics         []Metric  `json:"metrics"`
	Records         int       `json:"records"`
	Truncated       int       `json:"truncated"`
	SkippedNoTarget int       `json:"skipped_no_target"`
	Rows            []jsonRow `json:"rows"`
	Notes           []string  `json:"notes"`
	Seconds         float64   `json:"elapsed_seconds"`
}

// finite returns &x, or nil when x is NaN or infinite (JSON has no such numbers).
func finite(x float64) *float64 {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return nil
	}
	return &x
}

// MarshalJSON writes the report as one JSON document: the rows with every metric that was
// computed ("exact" null where it does not apply), token counts and seconds.
func (rep *Report) MarshalJSON() ([]byte, error) {
	j := jsonReport{Model: rep.Model, Data: rep.Data, Format: string(rep.Format), SeqLen: rep.SeqLen, BatchRows: rep.BatchRows,
		Metrics: rep.Metrics, Records: rep.Records, Truncated: rep.Truncated, SkippedNoTarget: rep.SkippedNoTarget,
		Notes: rep.Notes, Seconds: rep.Seconds, Rows: []jsonRow{}}
	if j.Notes == nil {
		j.Notes = []string{}
	}
	exactAsked := slices.Contains(rep.Metrics, Exact)
	for _, r := range rep.Rows {
		jr := jsonRow{Model: r.Name, Adapter: r.Adapter, Rank: r.Rank, Examples: r.Examples, Positions: r.Positions, Tokens: r.Tokens,
			LossSeconds: r.LossSeconds, ExactSeconds: r.ExactSeconds, PositionsPS: r.PositionsPerSecond(), Seconds: r.Seconds}
		if r.HasLoss {
			jr.Loss, jr.PPL = finite(r.Loss), finite(r.PPL)
		}
		if exactAsked && r.HasExact {
			c, t := r.ExactCorrect, r.ExactTotal
			jr.Exact, jr.ExactCorrect, jr.ExactTotal = finite(r.ExactRate()), &c, &t
		}
		j.Rows = append(j.Rows, jr)
	}
	return json.Marshal(j)
}

// rankVariant is one adapter as evaluated: whole (rank 0) or truncated to rank.
type rankVariant struct {
	a    *lora.Adapter
	rank int
}

// truncations returns adapter a whole (ranks empty) or truncated to each rank in ranks.
// Truncation is refused for an adapter not trained with lora.method dylora: its leading ranks
// were never trained to work alone.
func truncations(dir string, a *lora.Adapter, ranks []int) ([]rankVariant, error) {
	if len(ranks) == 0 {
		return []rankVariant{{a: a}}, nil
	}
	if a.Config.Method != "dylora" {
		return nil, fmt.Errorf("eval: --rank truncates a DyLoRA adapter, but %s was not trained with lora.method dylora (its leading ranks were not trained to work alone); drop --rank", dir)
	}
	var out []rankVariant
	for _, k := range ranks {
		c := &lora.Adapter{Config: a.Config}
		for _, p := range a.Pairs {
			q := *p
			c.Pairs = append(c.Pairs, &q)
		}
		if err := c.Truncate(k); err != nil {
			return nil, fmt.Errorf("eval: %s: --rank: %w", dir, err)
		}
		out = append(out, rankVariant{a: c, rank: k})
	}
	return out, nil
}
