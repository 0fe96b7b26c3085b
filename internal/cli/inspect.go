package cli

import (
	"encoding/json"

	"github.com/loractl/loractl/internal/config"
	"github.com/loractl/loractl/internal/inspect"
	"github.com/spf13/cobra"
)

// inspectOptions are the options of `loractl inspect`.
type inspectOptions struct {
	JSON bool `mapstructure:"json"`
}

func newInspectCmd(s *streams) *cobra.Command {
	c := &cobra.Command{
		Use:   "inspect PATH",
		Short: "Describe a model folder, a .safetensors file or an adapter folder",
		Long: `Inspect prints the architecture, the config fields that matter, the parameter count, the
dtype mix and the tensor table (name, dtype, shape, bytes) of PATH, which may be a HuggingFace
model folder, a PEFT adapter folder or a single .safetensors file. --json prints the same as JSON.`,
		Example: `  loractl inspect ./stories260K
  loractl inspect --json ./stories260K/model.safetensors`,
		Args: usageArgs(1, 1, "one PATH (a model folder, an adapter folder or a .safetensors file)"),
		RunE: func(c *cobra.Command, args []string) error {
			var o inspectOptions
			if err := config.Resolve(c.Flags(), "", &o); err != nil {
				return err
			}
			r, err := inspect.Inspect(args[0])
			if err != nil {
				return err
			}
			if o.JSON {
				enc := json.NewEncoder(s.Out)
				enc.SetIndent("", "  ")
				return enc.Encode(r)
			}
			return r.WriteText(s.Out)
		},
	}
	c.Flags().Bool("json", false, "print the report as JSON")
	return c
}
