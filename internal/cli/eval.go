package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/loractl/loractl/internal/data"
	"github.com/loractl/loractl/internal/eval"
	"github.com/loractl/loractl/internal/metrics"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
)

// evalOptions are the options of `loractl eval`; the mapstructure tags are the flag names.
type evalOptions struct {
	Model        string   `mapstructure:"model"`
	Adapter      []string `mapstructure:"adapter"`
	Rank         []int    `mapstructure:"rank"`
	Data         string   `mapstructure:"data"`
	Metrics      []string `mapstructure:"metrics"`
	JSON         bool     `mapstructure:"json"`
	MaxExamples  int      `mapstructure:"max-examples"`
	SeqLen       int      `mapstructure:"seq-len"`
	BatchTokens  int      `mapstructure:"batch-tokens"`
	Device       string   `mapstructure:"device"`
	ExactMargin  int      `mapstructure:"exact-margin"`
	Format       string   `mapstructure:"format"`
	SkipNoTarget bool     `mapstructure:"skip-no-target"`
}

func newEvalCmd(s *streams) *cobra.Command {
	var cfgFile string
	c := &cobra.Command{
		Use:   "eval",
		Short: "Evaluate loss, perplexity and exact match of a model and its adapters on a dataset",
		Long: `Eval scores a model on a JSONL data file, alone ("base", always the first row) and with each
--adapter (any PEFT LoRA adapter for that base), and prints one row per model: examples, target
tokens, loss, perplexity and, when asked, the exact-match rate.

Loss is the mean cross-entropy per target token over the whole file, with the masks of training:
the completion (and EOS) of {"prompt","completion"} records, the assistant turns of {"messages"}
records (the model's chat template), every token of {"text"} records. Records longer than
--seq-len positions are cut to it, as training cuts them (use the seq_len you trained with). The
loss runs the same pass as training's evaluation, with the adapter applied unmerged, so an
adapter saved at step N scores what training reported as eval_loss at step N. ppl = exp(loss).

exact (prompt/completion data only; n/a otherwise): the prompt is continued greedily for at most
the completion's length in tokens plus --exact-margin new tokens, stopping at EOS; the output
matches when it equals the completion after trimming leading and trailing whitespace from both.

The file is read line by line, one batch of --batch-tokens positions at a time, so memory does
not grow with its size. A progress bar is drawn on stderr when it is a terminal (not with
--json). --json prints one JSON document instead of the table.`,
		Example: `  loractl eval --model models/tiny-arith --adapter out/quickstart --data data/tiny-arith/sub.eval.jsonl --metrics loss,ppl,exact
  loractl eval --model ./stories260K --data moby-dick.jsonl --seq-len 256 --json
  loractl eval --model ./base --adapter run1 --adapter run2 --data eval.jsonl --max-examples 500`,
		Args: usageArgs(0, 0, "no arguments (the data file goes in --data)"),
		RunE: resolved(s, &cfgFile, runEval),
	}
	f := c.Flags()
	f.StringVar(&cfgFile, "config", "", "YAML file with eval options (flags override it)")
	f.String("model", "", "HuggingFace model folder (config.json, *.safetensors, tokenizer); default $LORACTL_TESTDATA/models/stories260K")
	f.StringArray("adapter", nil, "PEFT LoRA adapter folder to evaluate beside the base (repeat for several)")
	f.IntSlice("rank", nil, "evaluate each DyLoRA adapter truncated to these ranks (comma-separated), one row per rank")
	f.String("data", "", `JSONL file of {"text"}, {"prompt","completion"} or {"messages"} records`)
	f.StringSlice("metrics", []string{"loss", "ppl"}, "metrics to report: loss, ppl, exact (comma-separated)")
	f.Bool("json", false, "print one JSON document (rows with every metric, token counts, seconds) instead of the table")
	f.Int("max-examples", 0, "score only the first N records (0 = all)")
	f.Int("seq-len", 0, "positions per record; longer records are cut as in training (0 = min(256, max_position_embeddings), training's default)")
	f.Int("batch-tokens", eval.DefaultBatchTokens, "positions per forward batch (rows of --seq-len, records packed)")
	f.String("device", "auto", "compute device: auto, cpu, cuda or cuda:N (auto: a usable GPU, else the CPU)")
	f.Int("exact-margin", eval.DefaultExactMargin, "exact: new tokens allowed beyond the reference completion's length")
	f.String("format", "auto", "record shape: auto, text, prompt_completion or messages")
	f.Bool("skip-no-target", false, "skip records without any target token (as training does) instead of failing")
	return c
}

func runEval(s *streams, o *evalOptions) error {
	if o.Data == "" {
		return usageError{fmt.Errorf(`eval: no --data given; pass a JSONL file of {"text"}, {"prompt","completion"} or {"messages"} records`)}
	}
	mets, err := eval.ParseMetrics(o.Metrics)
	if err != nil {
		return usageError{fmt.Errorf("eval: --metrics: %w", err)}
	}
	switch {
	case o.MaxExamples < 0:
		return usageError{fmt.Errorf("eval: --max-examples must be >= 0, got %d", o.MaxExamples)}
	case o.SeqLen < 0:
		return usageError{fmt.Errorf("eval: --seq-len must be >= 0, got %d", o.SeqLen)}
	case o.BatchTokens < 1:
		return usageError{fmt.Errorf("eval: --batch-tokens must be >= 1, got %d", o.BatchTokens)}
	case o.ExactMargin < 0:
		return usageError{fmt.Errorf("eval: --exact-margin must be >= 0, got %d", o.ExactMargin)}
	}
	format := data.Format(o.Format)
	switch format {
	case "", data.FormatAuto, data.FormatText, data.FormatPromptCompletion, data.FormatMessages:
	default:
		return usageError{fmt.Errorf("eval: --format %q is not one of auto, text, prompt_completion, messages", o.Format)}
	}
	for _, k := range o.Rank {
		if k < 1 {
			return usageError{fmt.Errorf("eval: --rank %d: give ranks of at least 1", k)}
		}
	}
	if len(o.Rank) > 0 && len(o.Adapter) == 0 {
		return usageError{fmt.Errorf("eval: --rank truncates an adapter; give --adapter DIR (a DyLoRA adapter)")}
	}
	for _, a := range o.Adapter {
		if a == "" {
			return usageError{fmt.Errorf("eval: --adapter is empty; give a PEFT adapter folder")}
		}
	}
	dir, err := resolveModelDir(o.Model)
	if err != nil {
		return err
	}
	be, err := openBackend(o.Device, s.Err)
	if err != nil {
		return err
	}
	opt := eval.Options{Data: o.Data, Format: format, SeqLen: o.SeqLen, BatchTokens: o.BatchTokens, MaxExamples: o.MaxExamples,
		Metrics: mets, ExactMargin: o.ExactMargin, SkipNoTarget: o.SkipNoTarget, Ranks: o.Rank}
	if !o.JSON && metrics.IsTerminal(s.Err) {
		opt.Progress = &evalBar{w: s.Err}
	}
	rep, err := eval.Run(dir, o.Adapter, be, opt)
	if err != nil {
		return err
	}
	if o.JSON {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(s.Out, string(b))
		return err
	}
	for _, r := range rep.Rows {
		fmt.Fprintf(s.Err, "eval %s: %d examples, %d target tokens, %d positions in %.2fs (loss pass %.0f positions/s)\n",
			r.Name, r.Examples, r.Tokens, r.Positions, r.Seconds, r.PositionsPerSecond())
	}
	return writeEvalTable(s.Out, rep)
}

// writeEvalTable prints the side-by-side table, then the notes.
func writeEvalTable(w io.Writer, rep *eval.Report) error {
	has := func(m eval.Metric) bool { return slices.Contains(rep.Metrics, m) }
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	head := "model\texamples\ttokens"
	for _, m := range rep.Metrics {
		head += "\t" + string(m)
	}
	fmt.Fprintln(tw, head)
	for _, r := range rep.Rows {
		line := fmt.Sprintf("%s\t%d\t%d", r.Name, r.Examples, r.Tokens)
		if has(eval.Loss) {
			line += "\t" + fmtNum(r.Loss, "%.4f")
		}
		if has(eval.PPL) {
			line += "\t" + fmtNum(r.PPL, "%.3f")
		}
		if has(eval.Exact) {
			if r.HasExact {
				line += fmt.Sprintf("\t%.1f%% (%d/%d)", 100*r.ExactRate(), r.ExactCorrect, r.ExactTotal)
			} else {
				line += "\tn/a"
			}
		}
		fmt.Fprintln(tw, line)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "data %s (%s, %d records, seq_len %d)\n", rep.Data, rep.Format, rep.Records, rep.SeqLen)
	for _, n := range rep.Notes {
		fmt.Fprintln(w, "note: "+n)
	}
	return nil
}

// fmtNum formats a finite number, and NaN or Inf as such.
func fmtNum(x float64, format string) string {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return fmt.Sprint(x)
	}
	return fmt.Sprintf(format, x)
}

// evalBar draws one progress bar per row on a terminal, over the bytes of the data file.
type evalBar struct {
	w   io.Writer
	bar *progressbar.ProgressBar
}

func (b *evalBar) Begin(row string, total int64) {
	b.bar = progressbar.NewOptions64(max(total, 1),
		progressbar.OptionSetWriter(b.w),
		progressbar.OptionSetDescription("eval "+row),
		progressbar.OptionShowBytes(true),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionSetRenderBlankState(false),
	)
}

func (b *evalBar) Update(done int64) { _ = b.bar.Set64(done) }

func (b *evalBar) End() {
	_ = b.bar.Finish()
	fmt.Fprintln(b.w)
}
