package cli

import "github.com/spf13/cobra"

func newQuantizeCmd(*streams) *cobra.Command {
	return notYet("quantize", "Quantize a base model (NF4, int8, int4, GGUF)", "merge/quantize/eval (issue #6)")
}
