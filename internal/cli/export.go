package cli

import (
	"fmt"
	"strings"

	"github.com/loractl/loractl/internal/gguf"
	"github.com/spf13/cobra"
)

// exportOptions are the options of `loractl export`; the mapstructure tags are the flag names.
type exportOptions struct {
	Adapter   string `mapstructure:"adapter"`
	Format    string `mapstructure:"format"`
	Out       string `mapstructure:"out"`
	Base      string `mapstructure:"base"`
	Overwrite bool   `mapstructure:"overwrite"`
}

func newExportCmd(s *streams) *cobra.Command {
	var cfgFile string
	c := &cobra.Command{
		Use:   "export",
		Short: "Export a LoRA adapter for another runtime (GGUF LoRA for llama.cpp)",
		Long: `Export writes a PEFT LoRA adapter (ours or PEFT's) in another runtime's format.

--format gguf-lora writes the adapter GGUF that llama.cpp's --lora (and ollama's ADAPTER)
loads, as llama.cpp's convert_lora_to_gguf.py writes it: general.type=adapter,
adapter.type=lora, adapter.lora.alpha, and blk.N.<tensor>.weight.lora_a/.lora_b in F32 for
every adapted module. The rows of lora_B of q_proj and k_proj are permuted as llama.cpp's
converter permutes the base's q/k rows, and an rsLoRA adapter's alpha is written as alpha·√r so
that llama.cpp's alpha/r scale equals rsLoRA's alpha/√r.

The head counts come from the base model: --base DIR, or the adapter's
base_model_name_or_path when that is a local folder. Use it with a GGUF of the same base, e.g.
one written by 'loractl quantize --format gguf-f16'.`,
		Example: `  loractl export --adapter out/run1 --format gguf-lora --out run1-lora.gguf --base ./stories260K
  llama-cli -m stories260K-f16.gguf --lora run1-lora.gguf -p "Once upon a time"`,
		Args: usageArgs(0, 0, "no arguments (use --adapter and --out)"),
		RunE: resolved(s, &cfgFile, runExport),
	}
	f := c.Flags()
	f.StringVar(&cfgFile, "config", "", "YAML file with export options (flags override it)")
	f.String("adapter", "", "PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors)")
	f.String("format", gguf.FormatLoRA, "output format: gguf-lora")
	f.String("out", "", "output file (.gguf)")
	f.String("base", "", "base model folder (for the head counts); default the adapter's base_model_name_or_path when it is a local folder")
	f.Bool("overwrite", false, "replace an existing --out")
	return c
}

func runExport(s *streams, o *exportOptions) error {
	if o.Adapter == "" || o.Out == "" {
		return usageError{fmt.Errorf("export: need --adapter DIR and --out FILE.gguf (see 'loractl export --help')")}
	}
	if strings.ToLower(o.Format) != gguf.FormatLoRA {
		return usageError{fmt.Errorf("export: --format %q: the only export format is %s (for models, use 'loractl quantize --format gguf-f16|gguf-q8_0|gguf-q4_0')", o.Format, gguf.FormatLoRA)}
	}
	rep, err := gguf.ExportLoRA(o.Adapter, o.Out, o.Base, o.Overwrite)
	if err != nil {
		return err
	}
	rs := ""
	if rep.RSLoRA {
		rs = " (rsLoRA: alpha·√r)"
	}
	fmt.Fprintf(s.Err, "wrote %s: %d modules, %d tensors, r %d, adapter.lora.alpha %g%s, scale %g; base %s; %.2f KiB\n",
		rep.Out, rep.Modules, rep.Tensors, rep.R, rep.Alpha, rs, rep.Scale, rep.Base, float64(rep.Bytes)/1024)
	return nil
}
