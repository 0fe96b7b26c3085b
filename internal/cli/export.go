package cli

import "github.com/spf13/cobra"

func newExportCmd(*streams) *cobra.Command {
	return notYet("export", "Export an adapter for another runtime (GGUF LoRA for llama.cpp)", "merge/quantize/eval (issue #6)")
}
