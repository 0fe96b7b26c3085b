package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/loractl/loractl/internal/backend/cpu"
	"github.com/loractl/loractl/internal/lora"
	"github.com/loractl/loractl/internal/model"
	"github.com/loractl/loractl/internal/synth"
	"github.com/loractl/loractl/internal/tokenizer"
)

// runScore greedily answers every prompt of a {"prompt","completion"} file and counts the
// exact answers (synth.Score), with or without a LoRA adapter.
func runScore(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("tinymodel score", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("model", "models/tiny-arith", "model folder")
	adapter := fs.String("adapter", "", "PEFT LoRA adapter folder to merge first")
	path := fs.String("data", "data/tiny-arith/sub.eval.jsonl", "JSONL file of {\"prompt\",\"completion\"} records")
	maxN := fs.Int("n", 0, "score at most this many records (0: all)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	tok, err := tokenizer.Open(*dir)
	if err != nil {
		return err
	}
	m, err := model.Load(*dir, cpu.New())
	if err != nil {
		return err
	}
	if *adapter != "" {
		a, err := lora.Load(*adapter)
		if err != nil {
			return err
		}
		if err := a.CheckBase(m.Config(), *adapter); err != nil {
			return err
		}
		if err := a.MergeInto(m); err != nil {
			return err
		}
	}
	f, err := os.Open(*path)
	if err != nil {
		return err
	}
	defer f.Close()
	right, total := 0, 0
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		var rec synth.PromptCompletion
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			return fmt.Errorf("%s:%d: %v", *path, line, err)
		}
		ids := tok.Encode(rec.Prompt, true)
		gen, err := model.Generate(m, ids, 8, model.NewSampler(0, 0, 1, 1), []int{tok.EOS()}, nil)
		if err != nil {
			return err
		}
		if n := len(gen); n > 0 && gen[n-1] == tok.EOS() {
			gen = gen[:n-1]
		}
		if synth.Score(rec.Prompt, strings.TrimSpace(tok.Decode(gen))) {
			right++
		}
		total++
		if *maxN > 0 && total == *maxN {
			break
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: exact answers %d/%d (%.1f%%)\n", *path, right, total, 100*float64(right)/float64(max(total, 1)))
	return nil
}
