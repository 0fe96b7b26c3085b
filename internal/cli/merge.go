package cli

import "github.com/spf13/cobra"

func newMergeCmd(*streams) *cobra.Command {
	return notYet("merge", "Merge adapters into the base weights", "merge/quantize/eval (issue #6)")
}
