package cli

import (
	"fmt"

	"github.com/spf13/cobra"
)

// notYet builds a command whose implementation a later milestone delivers. It says so plainly
// and fails, rather than pretending to work.
func notYet(use, short, milestone string) *cobra.Command {
	return &cobra.Command{
		Use:                use,
		Short:              short + " (not implemented yet)",
		DisableFlagParsing: true,
		RunE: func(c *cobra.Command, _ []string) error {
			return fmt.Errorf("%s is not implemented yet: it arrives with %s; this build can run train, generate, tokenize and inspect", c.Name(), milestone)
		},
	}
}
