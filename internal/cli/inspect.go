package cli

import (
	"encoding/json"
	"io"

	"github.com/loractl/loractl/internal/backend/cuda"
	"github.com/loractl/loractl/internal/config"
	"github.com/loractl/loractl/internal/inspect"
	"github.com/spf13/cobra"
)

// inspectOptions are the options of `loractl inspect`.
type inspectOptions struct {
	JSON    bool `mapstructure:"json"`
	Devices bool `mapstructure:"devices"`
}

func newInspectCmd(s *streams) *cobra.Command {
	c := &cobra.Command{
		Use:   "inspect PATH",
		Short: "Describe a model folder, a .safetensors file or an adapter folder",
		Long: `Inspect prints the architecture, the config fields that matter, the parameter count, the
dtype mix and the tensor table (name, dtype, shape, bytes) of PATH, which may be a HuggingFace
model folder, a PEFT adapter folder or a single .safetensors file. --json prints the same as JSON.
--devices instead lists the compute devices this build can use: the NVIDIA driver and cuBLAS it
found (a -tags cuda build) and every GPU, or why there is none.`,
		Example: `  loractl inspect ./stories260K
  loractl inspect --json ./stories260K/model.safetensors
  loractl inspect --devices`,
		Args: func(c *cobra.Command, args []string) error {
			if d, _ := c.Flags().GetBool("devices"); d {
				return usageArgs(0, 0, "no PATH with --devices")(c, args)
			}
			return usageArgs(1, 1, "one PATH (a model folder, an adapter folder or a .safetensors file)")(c, args)
		},
		RunE: func(c *cobra.Command, args []string) error {
			var o inspectOptions
			if err := config.Resolve(c.Flags(), "", &o); err != nil {
				return err
			}
			if o.Devices {
				r := cuda.Probe()
				if o.JSON {
					enc := json.NewEncoder(s.Out)
					enc.SetIndent("", "  ")
					return enc.Encode(r)
				}
				_, err := io.WriteString(s.Out, "cpu      "+cpuDescription()+"\n"+r.String())
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
	c.Flags().Bool("devices", false, "list the compute devices (CPU, and GPUs in a -tags cuda build) instead of a PATH")
	return c
}
