package cli

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/loractl/loractl/internal/lora"
	"github.com/loractl/loractl/internal/model"
	"github.com/loractl/loractl/internal/tokenizer"
	"github.com/spf13/cobra"
)

// generateOptions are the options of `loractl generate`; the mapstructure tags are the flag names.
type generateOptions struct {
	Model       string  `mapstructure:"model"`
	Adapter     string  `mapstructure:"adapter"`
	Prompt      string  `mapstructure:"prompt"`
	N           int     `mapstructure:"n"`
	Temperature float64 `mapstructure:"temperature"`
	TopK        int     `mapstructure:"top-k"`
	TopP        float64 `mapstructure:"top-p"`
	Seed        uint64  `mapstructure:"seed"`
	IDs         bool    `mapstructure:"ids"`
	NoStop      bool    `mapstructure:"no-stop"`
	Device      string  `mapstructure:"device"`
}

func newGenerateCmd(s *streams) *cobra.Command {
	var cfgFile string
	c := &cobra.Command{
		Use:   "generate",
		Short: "Generate text from a model with a KV cache (greedy or sampled)",
		Long: `Generate loads a HuggingFace checkpoint and streams a continuation of --prompt to stdout.
--adapter merges a PEFT LoRA adapter (ours or PEFT's) into the weights first.

-n is the number of new tokens. --temperature 0 is greedy and deterministic; otherwise
--top-k, --top-p and --seed shape the sampling. Generation stops early at an end-of-sequence
token unless --no-stop is given. Tokens/s are reported on stderr at the end. With --ids, one JSON
line {"prompt_ids":[...],"generated_ids":[...]} follows the text.

Without --model, the built-in default is stories260K from the reference folder named by
$LORACTL_TESTDATA (models/stories260K).`,
		Example: `  loractl generate --model ./stories260K --prompt "Once upon a time" -n 64
  loractl generate --model ./stories260K --prompt "Lily" --temperature 0.8 --top-k 40 --top-p 0.95 --seed 1`,
		Args: usageArgs(0, 0, "no arguments (the prompt goes in --prompt)"),
		RunE: resolved(s, &cfgFile, runGenerate),
	}
	f := c.Flags()
	f.StringVar(&cfgFile, "config", "", "YAML file with generate options (flags override it)")
	f.String("model", "", "HuggingFace model folder (config.json, *.safetensors, tokenizer); default $LORACTL_TESTDATA/models/stories260K")
	f.String("adapter", "", "PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors) merged into the model")
	f.String("prompt", "", "prompt text (BOS is added as the tokenizer specifies)")
	f.IntP("n", "n", 64, "number of new tokens to generate")
	f.Float64("temperature", 0, "sampling temperature; 0 = greedy")
	f.Int("top-k", 0, "keep only the k most likely tokens (0 = off)")
	f.Float64("top-p", 1, "nucleus sampling: keep the smallest set with probability >= p (1 = off)")
	f.Uint64("seed", 1, "random seed for sampling")
	f.Bool("ids", false, `after the text, print {"prompt_ids":[...],"generated_ids":[...]} as one JSON line`)
	f.Bool("no-stop", false, "do not stop at end-of-sequence tokens")
	f.String("device", "auto", "compute device: auto, cpu, cuda or cuda:N (auto: a usable GPU, else the CPU)")
	return c
}

func runGenerate(s *streams, o *generateOptions) error {
	dir, err := resolveModelDir(o.Model)
	if err != nil {
		return err
	}
	be, err := openBackend(o.Device, s.Err)
	if err != nil {
		return err
	}
	if o.N < 0 {
		return usageError{fmt.Errorf("generate: -n must be >= 0, got %d", o.N)}
	}
	if o.Temperature < 0 || o.TopP <= 0 || o.TopP > 1 || o.TopK < 0 {
		return usageError{fmt.Errorf("generate: need --temperature >= 0, 0 < --top-p <= 1 and --top-k >= 0")}
	}
	tok, err := tokenizer.Open(dir)
	if err != nil {
		return err
	}
	// Without an adapter to merge, a BF16 checkpoint stays BF16 in memory (bitwise the same
	// output); merging needs float32 weights.
	m, err := model.LoadWith(dir, be, model.LoadOptions{KeepBF16: o.Adapter == ""})
	if err != nil {
		return err
	}
	cfg := m.Config()
	if o.Adapter != "" {
		a, err := lora.LoadFor(o.Adapter, cfg, "")
		if err != nil {
			return err
		}
		if err := a.MergeInto(m); err != nil {
			return err
		}
	}
	if tok.VocabSize() > cfg.VocabSize {
		return fmt.Errorf("%s: the tokenizer has %d tokens but the model's vocab_size is %d; the tokenizer files belong to another model", dir, tok.VocabSize(), cfg.VocabSize)
	}

	prompt := tok.Encode(o.Prompt, true)
	if len(prompt) == 0 {
		if tok.BOS() < 0 {
			return usageError{fmt.Errorf("generate: the prompt is empty and the tokenizer has no BOS token; give --prompt")}
		}
		prompt = []int{tok.BOS()}
	}
	var stop []int
	if !o.NoStop {
		stop = stopIDs(cfg.EOSTokenIDs, tok.EOS())
	}

	// Stream the prompt, then each new token, through one decoder so spacing is exact.
	// The prompt is echoed once the first token arrives, so that a prompt the model
	// rejects (too long for its context) is not printed before the error.
	dec := tokenizer.NewStreamDecoder(tok)
	echoed := false
	echoPrompt := func() {
		if !echoed {
			echoed = true
			for _, id := range prompt {
				fmt.Fprint(s.Out, dec.Next(id))
			}
		}
	}
	sampler := model.NewSampler(float32(o.Temperature), o.TopK, float32(o.TopP), o.Seed)
	start := time.Now()
	var first time.Duration
	gen, err := model.Generate(m, prompt, o.N, sampler, stop, func(id int) error {
		if first == 0 {
			first = time.Since(start)
		}
		echoPrompt()
		_, err := fmt.Fprint(s.Out, dec.Next(id))
		return err
	})
	elapsed := time.Since(start)
	if err != nil && !echoed {
		return err
	}
	echoPrompt()
	fmt.Fprintln(s.Out, dec.Flush())
	if err != nil {
		return err
	}
	if o.IDs {
		line, _ := json.Marshal(struct {
			Prompt    []int `json:"prompt_ids"`
			Generated []int `json:"generated_ids"`
		}{nonNil(prompt), nonNil(gen)})
		fmt.Fprintln(s.Out, string(line))
	}
	reportSpeed(s, len(prompt), len(gen), first, elapsed)
	return nil
}

// reportSpeed prints generation throughput on stderr. The first token's time includes the
// prompt pass; the decode rate counts the tokens after it.
func reportSpeed(s *streams, nPrompt, nGen int, first, total time.Duration) {
	if nGen == 0 {
		fmt.Fprintf(s.Err, "generated 0 tokens (prompt %d tokens)\n", nPrompt)
		return
	}
	rate := float64(nGen) / total.Seconds()
	fmt.Fprintf(s.Err, "generated %d tokens in %.3fs: %.1f tokens/s (prompt %d tokens, first token after %.1f ms)\n",
		nGen, total.Seconds(), rate, nPrompt, float64(first.Microseconds())/1000)
}

// stopIDs merges the model's EOS ids with the tokenizer's.
func stopIDs(model []int, tokEOS int) []int {
	out := append([]int(nil), model...)
	if tokEOS >= 0 {
		found := false
		for _, id := range out {
			found = found || id == tokEOS
		}
		if !found {
			out = append(out, tokEOS)
		}
	}
	return out
}

func nonNil(x []int) []int {
	if x == nil {
		return []int{}
	}
	return x
}
