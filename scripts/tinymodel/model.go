package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/loractl/loractl/internal/safetensors"
	"github.com/loractl/loractl/internal/synth"
)

// modelOptions are the flags of init.
type modelOptions struct {
	Out     string
	Dim     int // hidden_size
	Layers  int
	Heads   int
	KVHeads int
	Hidden  int // intermediate_size
	Seq     int // max_position_embeddings
	Seed    uint64
	Std     float64 // init std of every matrix
	Force   bool
}

// initStd is the initializer_range of transformers' LlamaConfig.
const initStd = 0.02

// modelFiles are the files init writes; an existing one is kept unless -force.
var modelFiles = []string{"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json"}

func runInit(args []string, stdout, stderr io.Writer) error {
	o := modelOptions{Std: initStd}
	fs := flag.NewFlagSet("tinymodel init", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.Out, "out", "", "model folder to write (created if missing)")
	fs.IntVar(&o.Dim, "dim", 64, "hidden size")
	fs.IntVar(&o.Layers, "layers", 2, "number of layers")
	fs.IntVar(&o.Heads, "heads", 4, "attention heads")
	fs.IntVar(&o.KVHeads, "kv-heads", 2, "key/value heads (GQA); must divide -heads")
	fs.IntVar(&o.Hidden, "hidden", 172, "MLP intermediate size")
	fs.IntVar(&o.Seq, "seq", 64, "context length (max_position_embeddings)")
	fs.Uint64Var(&o.Seed, "seed", 1, "seed of the random initialisation")
	fs.BoolVar(&o.Force, "force", false, "overwrite the model files of an existing folder")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := o.validate(); err != nil {
		return err
	}
	st, err := writeModel(o)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s: llama, %d layers, hidden %d, heads %d/%d, mlp %d, vocab %d, context %d; %d parameters, model.safetensors %d bytes\n",
		o.Out, o.Layers, o.Dim, o.Heads, o.KVHeads, o.Hidden, synth.VocabSize(), o.Seq, st.params, st.bytes)
	return nil
}

// validate checks the options before anything is written.
func (o *modelOptions) validate() error {
	switch {
	case o.Out == "":
		return usagef("-out DIR is required")
	case o.Dim <= 0 || o.Layers <= 0 || o.Heads <= 0 || o.KVHeads <= 0 || o.Hidden <= 0 || o.Seq <= 0:
		return usagef("-dim, -layers, -heads, -kv-heads, -hidden and -seq must be positive")
	case o.Dim%o.Heads != 0:
		return usagef("-dim %d is not a multiple of -heads %d", o.Dim, o.Heads)
	case (o.Dim/o.Heads)%2 != 0:
		return usagef("head dim -dim/-heads = %d must be even (RoPE rotates pairs)", o.Dim/o.Heads)
	case o.Heads%o.KVHeads != 0:
		return usagef("-heads %d is not a multiple of -kv-heads %d", o.Heads, o.KVHeads)
	case o.Dim*max(o.Dim, o.Hidden) > 1<<26:
		return usagef("-dim %d / -hidden %d make a matrix over 64M entries; this tool is for tiny models", o.Dim, o.Hidden)
	}
	return nil
}

func (o *modelOptions) config() synth.LlamaConfig {
	return o.shape().Config(o.Seq, o.Std)
}

func (o *modelOptions) shape() synth.LlamaShape {
	return synth.LlamaShape{Dim: o.Dim, Layers: o.Layers, Heads: o.Heads, KVHeads: o.KVHeads,
		Hidden: o.Hidden, Vocab: synth.VocabSize()}
}

// tensors returns the model's weights in HF Llama names, F32: every matrix drawn from
// N(0, std²) in a fixed order from one generator seeded with o.Seed, every norm weight 1.
// lm_head is tied to embed_tokens and not stored.
func (o *modelOptions) tensors() ([]safetensors.Tensor, int64, error) {
	return synth.LlamaTensors(o.shape(), o.Std, o.Seed)
}

// modelStats reports what writeModel wrote.
type modelStats struct {
	params int64 // parameters (the tied lm_head counted once)
	bytes  int64 // size of model.safetensors
}

// writeModel writes the model folder o.Out. Each file is written atomically; existing model
// files are an error unless o.Force.
func writeModel(o modelOptions) (modelStats, error) {
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return modelStats{}, err
	}
	if !o.Force {
		for _, f := range modelFiles {
			p := filepath.Join(o.Out, f)
			if _, err := os.Stat(p); err == nil {
				return modelStats{}, fmt.Errorf("%s already exists; pass -force to overwrite the model in %s", p, o.Out)
			} else if !errors.Is(err, fs.ErrNotExist) {
				return modelStats{}, err
			}
		}
	}
	ts, params, err := o.tensors()
	if err != nil {
		return modelStats{}, err
	}
	weights := filepath.Join(o.Out, "model.safetensors")
	if err := safetensors.Write(weights, ts, map[string]string{"format": "pt"}); err != nil {
		return modelStats{}, err
	}
	if err := writeJSON(filepath.Join(o.Out, "config.json"), o.config()); err != nil {
		return modelStats{}, err
	}
	gen := map[string]any{"bos_token_id": synth.BOSID, "eos_token_id": synth.EOSID, "max_length": o.Seq, "do_sample": false}
	if err := writeJSON(filepath.Join(o.Out, "generation_config.json"), gen); err != nil {
		return modelStats{}, err
	}
	if err := synth.WriteTokenizer(o.Out, o.Seq); err != nil {
		return modelStats{}, err
	}
	st, err := os.Stat(weights)
	if err != nil {
		return modelStats{}, err
	}
	return modelStats{params: params, bytes: st.Size()}, nil
}

// writeJSON writes v as indented JSON, atomically.
func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return synth.WriteFileAtomic(path, append(data, '\n'))
}
