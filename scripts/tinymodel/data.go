package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/loractl/loractl/internal/synth"
)

// dataOptions are the flags of data.
type dataOptions struct {
	Out    string
	N      int      // pretraining train lines
	FtN    int      // fine-tuning train samples per task
	EvalN  int      // samples of each eval file
	Tasks  []string // fine-tuning tasks
	Seed   uint64
	Stdout io.Writer
}

func runData(args []string, stdout, stderr io.Writer) error {
	o := dataOptions{Stdout: stdout}
	var tasks string
	fs := flag.NewFlagSet("tinymodel data", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.Out, "out", "", "folder to write the JSONL files into (created if missing)")
	fs.IntVar(&o.N, "n", 20000, "pretraining lines in pretrain.train.jsonl")
	fs.IntVar(&o.FtN, "ft-n", 2000, "fine-tuning samples in each TASK.train.jsonl")
	fs.IntVar(&o.EvalN, "eval-n", 200, "samples in each *.eval.jsonl")
	fs.StringVar(&tasks, "tasks", synth.DefaultFinetuneTask, "comma-separated fine-tuning tasks (known: "+strings.Join(synth.TaskNames(), ", ")+")")
	fs.Uint64Var(&o.Seed, "seed", 1, "seed of the generators")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	for _, t := range strings.Split(tasks, ",") {
		if t = strings.TrimSpace(t); t != "" {
			o.Tasks = append(o.Tasks, t)
		}
	}
	if err := o.validate(); err != nil {
		return err
	}
	return writeData(o)
}

// validate checks the options before anything is written.
func (o *dataOptions) validate() error {
	if o.Out == "" {
		return usagef("-out DIR is required")
	}
	if o.N <= 0 || o.FtN <= 0 || o.EvalN <= 0 {
		return usagef("-n, -ft-n and -eval-n must be positive")
	}
	for _, t := range o.Tasks {
		if _, err := synth.Lookup(t); err != nil {
			return usageError{err.Error()}
		}
	}
	return nil
}

// writeData writes pretrain.{train,eval}.jsonl ({"text"} lines of add and copy) and, for
// each fine-tuning task, TASK.{train,eval}.jsonl ({"prompt","completion"} lines).
func writeData(o dataOptions) error {
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return err
	}
	report := func(path string, n int, what string) {
		if o.Stdout != nil {
			fmt.Fprintf(o.Stdout, "wrote %s: %d %s\n", path, n, what)
		}
	}
	for _, sp := range []struct {
		split synth.Split
		n     int
	}{{synth.Train, o.N}, {synth.Eval, o.EvalN}} {
		path := filepath.Join(o.Out, "pretrain."+sp.split.String()+".jsonl")
		if err := synth.WriteJSONL(path, synth.Texts(synth.Pretrain(sp.split, sp.n, o.Seed))); err != nil {
			return err
		}
		report(path, sp.n, "text lines ("+strings.Join(synth.PretrainTaskNames(), ", ")+")")
	}
	for _, name := range o.Tasks {
		task, err := synth.Lookup(name)
		if err != nil {
			return err
		}
		for _, sp := range []struct {
			split synth.Split
			n     int
		}{{synth.Train, o.FtN}, {synth.Eval, o.EvalN}} {
			path := filepath.Join(o.Out, name+"."+sp.split.String()+".jsonl")
			if err := synth.WriteJSONL(path, task.Generate(sp.split, sp.n, o.Seed)); err != nil {
				return err
			}
			report(path, sp.n, "prompt/completion samples ("+task.Doc+")")
		}
	}
	return nil
}
