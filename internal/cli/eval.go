package cli

import "github.com/spf13/cobra"

func newEvalCmd(*streams) *cobra.Command {
	return notYet("eval", "Evaluate loss, perplexity and exact match on a dataset", "merge/quantize/eval (issue #6)")
}
