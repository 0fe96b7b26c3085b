package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/loractl/loractl/internal/config"
	"github.com/loractl/loractl/internal/metrics"
	"github.com/loractl/loractl/internal/train"
	"github.com/spf13/cobra"
)

// trainOptions are the per-invocation options of `loractl train`; the training itself is
// configured by config.Train.
type trainOptions struct {
	Config      string
	Sets        []string
	DryRun      bool
	Resume      string
	InitAdapter string
	Quiet       bool
	LogEvery    int
}

func newTrainCmd(s *streams) *cobra.Command {
	var o trainOptions
	c := &cobra.Command{
		Use:   "train --config FILE",
		Short: "Train LoRA adapters (or fully fine-tune) from a YAML config",
		Long: `Train fine-tunes a HuggingFace model as the YAML config says (keys and defaults: configs/README.md)
and writes a PEFT adapter (adapter_model.safetensors + adapter_config.json), checkpoint-N/ folders,
metrics.jsonl, loss.png and the resolved config.yaml into the output folder.

Precedence: --set key=value > --out/--max-steps/--save-every/--overwrite > LORACTL_<SECTION>_<KEY>
environment variables > the file > defaults. Ctrl-C writes a checkpoint and exits; --resume continues
from one exactly.`,
		Example: `  loractl train --config configs/quickstart.yaml
  loractl train --config my.yaml --set lora.r=32 --set train.lr=2e-4
  loractl train --config my.yaml --dry-run
  loractl train --config my.yaml --resume out/checkpoint-400
  loractl train --config my.yaml --init-adapter some/peft_adapter_dir`,
		Args: usageArgs(0, 0, "no arguments (give the config with --config)"),
		RunE: func(c *cobra.Command, _ []string) error {
			cfg, err := config.ResolveTrain(o.Config, o.Sets, c.Flags())
			if err != nil {
				return err
			}
			return runTrain(c.Context(), s, cfg, &o)
		},
	}
	f := c.Flags()
	f.StringVar(&o.Config, "config", "", "YAML training config (see configs/)")
	f.StringArrayVar(&o.Sets, "set", nil, "override one key, e.g. --set lora.r=32 (repeatable)")
	f.BoolVar(&o.DryRun, "dry-run", false, "print the resolved config, trainable parameters and memory plan; train nothing")
	f.StringVar(&o.Resume, "resume", "", "continue from a checkpoint-N folder")
	f.StringVar(&o.InitAdapter, "init-adapter", "", "start from an existing PEFT LoRA adapter folder")
	f.BoolVar(&o.Quiet, "quiet", false, "no progress output")
	f.IntVar(&o.LogEvery, "log-every", 10, "plain-log mode (when stderr is not a terminal): a line every N steps")
	// Shortcuts for config keys (config.TrainShortcuts).
	f.String("out", "", "output folder (output.dir)")
	f.Int("max-steps", 0, "optimizer steps (train.max_steps)")
	f.Int("save-every", 0, "checkpoint every N steps (train.save_every)")
	f.Bool("overwrite", false, "replace a finished run in the output folder (output.overwrite)")
	return c
}

func runTrain(ctx context.Context, s *streams, cfg *config.Train, o *trainOptions) error {
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	opt := train.Options{Resume: o.Resume, InitAdapter: o.InitAdapter, DryRun: o.DryRun, Log: s.Err}
	if o.DryRun {
		opt.Log = s.Out
	}
	if o.Quiet {
		opt.Log = nil
	} else {
		opt.ReporterFor = func(total, start int) metrics.Reporter {
			if metrics.IsTerminal(s.Err) {
				return metrics.NewBar(s.Err, total, start)
			}
			return metrics.NewLog(s.Err, o.LogEvery)
		}
	}
	// The reporter prints the summary; the result is for callers that embed the trainer.
	_, err := train.Run(ctx, cfg, opt)
	if errors.Is(err, train.ErrInterrupted) {
		fmt.Fprintln(s.Err)
	}
	if err != nil {
		return err
	}
	return nil
}
