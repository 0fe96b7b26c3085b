package cli

import (
	"fmt"
	"strings"

	"github.com/loractl/loractl/internal/quant"
	"github.com/spf13/cobra"
)

// quantizeOptions are the options of `loractl quantize`; the mapstructure tags are the flag names.
type quantizeOptions struct {
	Model       string `mapstructure:"model"`
	Out         string `mapstructure:"out"`
	Format      string `mapstructure:"format"`
	GroupSize   int    `mapstructure:"group-size"`
	DoubleQuant bool   `mapstructure:"double-quant"`
	Overwrite   bool   `mapstructure:"overwrite"`
}

func newQuantizeCmd(s *streams) *cobra.Command {
	var cfgFile string
	c := &cobra.Command{
		Use:   "quantize",
		Short: "Quantize a base model (NF4, int8, int4, GGUF)",
		Long: `Quantize writes a quantized copy of a HuggingFace model folder.

--format nf4|int8|int4 writes a folder: config.json with a quantization_config, model.safetensors
with every block Linear weight (q/k/v/o/gate/up/down_proj) as packed U8 codes plus float32
scales per --group-size elements (embeddings, lm_head and norms are kept as they are), and the
tokenizer and generation files copied. nf4 is QLoRA's 4-bit NormalFloat (blockwise absmax,
bitsandbytes packing); --double-quant also quantizes the absmax values (8-bit, blocks of 256).
int8 and int4 are symmetric with one scale per group. The layout is in docs/FORMATS.md.
loractl generate, eval, merge and train load such a folder directly.

--format gguf-f16|gguf-q8_0|gguf-q4_0 writes a single-file GGUF model for llama.cpp instead
(--out FILE.gguf).`,
		Example: `  loractl quantize --model ./stories260K --out ./stories260K-nf4 --format nf4 --double-quant
  loractl quantize --model ./stories260K --out ./stories260K-int8 --format int8 --group-size 128
  loractl quantize --model ./stories260K --out stories260K-q8_0.gguf --format gguf-q8_0`,
		Args: usageArgs(0, 0, "no arguments (use --model and --out)"),
		RunE: resolved(s, &cfgFile, runQuantize),
	}
	f := c.Flags()
	f.StringVar(&cfgFile, "config", "", "YAML file with quantize options (flags override it)")
	f.String("model", "", "HuggingFace model folder to quantize; default $LORACTL_TESTDATA/models/stories260K")
	f.String("out", "", "output folder (nf4, int8, int4) or .gguf file (gguf-*)")
	f.String("format", "nf4", "nf4, int8, int4, gguf-f16, gguf-q8_0 or gguf-q4_0")
	f.Int("group-size", quant.DefaultGroupSize, "elements per quantization group (block) for nf4, int8 and int4")
	f.Bool("double-quant", false, "nf4: quantize the absmax values too (8-bit, blocks of 256): about 4.13 instead of 4.5 bits per parameter")
	f.Bool("overwrite", false, "replace the files of an existing --out")
	return c
}

func runQuantize(s *streams, o *quantizeOptions) error {
	dir, err := resolveModelDir(o.Model)
	if err != nil {
		return err
	}
	if o.Out == "" {
		return usageError{fmt.Errorf("quantize: --out is required (an output folder, or a .gguf file for --format gguf-*)")}
	}
	if strings.HasPrefix(strings.ToLower(o.Format), "gguf-") {
		if o.DoubleQuant {
			return usageError{fmt.Errorf("quantize: --double-quant applies to --format nf4 only, not %s", o.Format)}
		}
		return runQuantizeGGUF(s, ggufOptions{Model: dir, Out: o.Out, Format: strings.ToLower(o.Format), Overwrite: o.Overwrite})
	}
	if strings.HasSuffix(strings.ToLower(o.Out), ".gguf") {
		return usageError{fmt.Errorf("quantize: --out %s is a .gguf file, but --format %s writes a model folder; use --format gguf-f16, gguf-q8_0 or gguf-q4_0 for GGUF", o.Out, o.Format)}
	}
	f, err := quant.ParseFormat(o.Format)
	if err != nil {
		return usageError{fmt.Errorf("quantize: --format %q: want nf4, int8, int4, gguf-f16, gguf-q8_0 or gguf-q4_0", o.Format)}
	}
	qo := quant.Options{Format: f, GroupSize: o.GroupSize, DoubleQuant: o.DoubleQuant}
	if err := qo.Validate(); err != nil {
		return usageError{fmt.Errorf("quantize: %w", err)}
	}
	rep, err := quant.QuantizeFolder(dir, o.Out, qo, o.Overwrite)
	if err != nil {
		return err
	}
	dq := ""
	if qo.DoubleQuant {
		dq = " with double quantization"
	}
	fmt.Fprintf(s.Err, "quantized %d Linear weights to %s (group %d%s): %.3f bits/param; kept %d tensors as they were\n",
		rep.Quantized, qo.Format, qo.GroupSize, dq, rep.BitsPerParam(), rep.Kept)
	fmt.Fprintf(s.Err, "weights %.2f MiB → %.2f MiB (largest tensor in float32 while streaming: %.2f MiB); wrote %s\n",
		float64(rep.SourceBytes)/(1<<20), float64(rep.OutBytes)/(1<<20), float64(rep.PeakTensor)/(1<<20), rep.Out)
	return nil
}
