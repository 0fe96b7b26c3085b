// Package cli holds loractl's cobra commands: one file per command. Each command resolves its
// options (internal/config), then calls a plain function in the package that does the work.
package cli

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
)

// Version is the loractl version, set at build time with -ldflags "-X .../cli.Version=v1.2.3".
var Version = "dev"

// streams are the standard streams a command reads and writes; tests replace them.
type streams struct {
	In  io.Reader
	Out io.Writer
	Err io.Writer
}

// Main runs loractl with args and returns the process exit code: 0 on success, 1 on any error
// (printed as one line on stderr), 2 on a usage error.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	s := &streams{In: stdin, Out: stdout, Err: stderr}
	root := NewRootCmd(s)
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return 0
	}
	fmt.Fprintf(stderr, "loractl: %s\n", oneLine(err.Error()))
	var ue usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

// NewRootCmd builds the command tree.
func NewRootCmd(s *streams) *cobra.Command {
	root := &cobra.Command{
		Use:   "loractl",
		Short: "LoRA fine-tuning toolkit for foundation models",
		Long: `loractl trains low-rank adapters (LoRA and its variants) for HuggingFace checkpoints
and writes them in the PEFT format, on the CPU or an NVIDIA GPU.`,
		Version:       Version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetIn(s.In)
	root.SetOut(s.Out)
	root.SetErr(s.Err)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageError{fmt.Errorf("%s: %v (see '%s --help')", c.Name(), err, c.CommandPath())}
	})
	root.AddCommand(
		newTrainCmd(s),
		newMergeCmd(s),
		newQuantizeCmd(s),
		newEvalCmd(s),
		newExportCmd(s),
		newGenerateCmd(s),
		newTokenizeCmd(s),
		newInspectCmd(s),
	)
	return root
}

// usageError marks errors in how loractl was called (exit code 2).
type usageError struct{ err error }

func (u usageError) Error() string { return u.err.Error() }
func (u usageError) Unwrap() error { return u.err }

// oneLine folds a multi-line error message onto one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " ")), " ")
}

// usageArgs returns a cobra.PositionalArgs that accepts between min and max arguments and
// otherwise fails with a usage error that says what the arguments are.
func usageArgs(min, max int, what string) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if len(args) < min || len(args) > max {
			return usageError{fmt.Errorf("%s: expected %s, got %d argument(s) (see '%s --help')", c.Name(), what, len(args), c.CommandPath())}
		}
		return nil
	}
}
