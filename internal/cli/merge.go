package cli

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"

	"github.com/loractl/loractl/internal/merge"
	"github.com/spf13/cobra"
)

// mergeOptions are the options of `loractl merge`; the mapstructure tags are the flag names.
type mergeOptions struct {
	Base         string   `mapstructure:"base"`
	Adapter      []string `mapstructure:"adapter"`
	Out          string   `mapstructure:"out"`
	Method       string   `mapstructure:"method"`
	Density      float64  `mapstructure:"density"`
	Rank         int      `mapstructure:"rank"`
	Seed         uint64   `mapstructure:"seed"`
	DType        string   `mapstructure:"dtype"`
	MaxShardSize string   `mapstructure:"max-shard-size"`
	Overwrite    bool     `mapstructure:"overwrite"`
	JSON         bool     `mapstructure:"json"`
}

func newMergeCmd(s *streams) *cobra.Command {
	var cfgFile string
	c := &cobra.Command{
		Use:   "merge",
		Short: "Merge LoRA adapters into the base weights and write a complete model folder",
		Long: `Merge folds one or more PEFT LoRA adapters into the weights of their base model and writes
--out as a complete Hugging Face model folder: config.json (torch_dtype set to the output
dtype), model.safetensors (or model-0000N-of-0000M.safetensors shards and
model.safetensors.index.json above --max-shard-size), the tokenizer files and
tokenizer_config.json (chat template included) copied unchanged, and generation_config.json with
the base's eos_token_id (taken from its generation_config.json, else config.json, else the
tokenizer's EOS token; written new when the base has none).

Each --adapter is DIR or DIR:WEIGHT (default weight 1). The text after the last ':' is a weight
only when it parses as a number, so paths that contain ':' still work.

Methods (sᵢ = lora_alpha/r, or lora_alpha/√r with rsLoRA; the output is always dense):
  linear       W' = W0 + Σ wᵢ·sᵢ·BᵢAᵢ
  cat          the adapters' ranks concatenated (A stacked, B side by side, wᵢ·sᵢ folded in);
               the same weights as linear, bit for bit; needs adapters of one rank
  svd          the linear sum truncated to its best rank --rank approximation (default: the
               largest adapter rank), computed exactly from the factors (QR + a small SVD)
  ties         TIES-Merging on the task vectors τᵢ = wᵢ·sᵢ·BᵢAᵢ of each weight: keep the
               round(down) density·numel entries of largest magnitude, elect each entry's sign
               as the sign of Σ τᵢ (0 counts as +), and take the mean of the entries that agree
  dare_linear  DARE: drop each entry of τᵢ with probability 1-density and divide the kept ones
               by density (masks drawn from --seed, per adapter and tensor), then sum
  dare_ties    DARE's drop and rescale, then TIES' sign election and disjoint mean

Everything is computed in float64 from the adapters' float32 factors and the base's weights and
rounded once to --dtype (default: the dtype most of the base's weights are stored in).
The base is read tensor by tensor from its memory-mapped files and each tensor is written as it
is computed, so memory stays near the size of one tensor; the peak is reported on stderr.
The output is written into a temporary folder beside --out and renamed into place at the end:
an error (a full disk included) leaves no partial output. An existing --out is refused unless
--overwrite is given.

Each adapter is checked against the base: its target modules must exist with the same shapes,
and an adapter saved by loractl train carries a fingerprint of its base's architecture that must
match. Adapters from PEFT (no fingerprint) are checked by shape alone. NaN or infinite values in
an adapter or in the base are an error naming the tensor and file. See docs/MERGE.md.`,
		Example: `  loractl merge --base ./stories260K --adapter out/run1 --out merged
  loractl merge --base ./base --adapter a:0.7 --adapter b:0.3 --method ties --density 0.5 --out merged
  loractl merge --base ./base --adapter a --adapter b --method svd --rank 16 --dtype bf16 --out merged`,
		Args: usageArgs(0, 0, "no arguments (use --base, --adapter and --out)"),
		RunE: resolved(s, &cfgFile, runMerge),
	}
	f := c.Flags()
	f.StringVar(&cfgFile, "config", "", "YAML file with merge options (flags override it)")
	f.String("base", "", "base model folder (config.json, *.safetensors, tokenizer files)")
	f.StringArray("adapter", nil, "PEFT LoRA adapter folder, optionally with a weight: DIR or DIR:WEIGHT (repeat for several)")
	f.String("out", "", "output folder for the merged model (must not exist unless --overwrite)")
	f.String("method", "linear", "how to combine adapters: "+strings.Join(methodNames(), ", "))
	f.Float64("density", 0.5, "ties, dare_linear, dare_ties: fraction of each adapter's update that is kept (0 < d <= 1)")
	f.Int("rank", 0, "svd: rank of the merged update (0 = the largest adapter rank); other methods: keep each adapter's leading k ranks (DyLoRA)")
	f.Uint64("seed", 0, "dare_linear, dare_ties: seed of the random drop masks")
	f.String("dtype", "", "output dtype: bf16, f16 or f32 (default: the base's dtype)")
	f.String("max-shard-size", "5GB", "largest safetensors shard (e.g. 5GB, 500MB, 2GiB); bigger outputs are sharded with an index")
	f.Bool("overwrite", false, "replace --out if it exists")
	f.Bool("json", false, "print a JSON summary (files, sizes, peak memory) on stdout")
	return c
}

func methodNames() []string {
	out := make([]string, len(merge.Methods))
	for i, m := range merge.Methods {
		out[i] = string(m)
	}
	return out
}

// parseAdapterArg splits DIR[:WEIGHT]. The text after the last ':' is a weight only if it
// parses as a number; when the whole argument names an existing folder and the part before
// the ':' does not, the whole argument is the folder.
func parseAdapterArg(arg string) (merge.AdapterSpec, error) {
	if arg == "" {
		return merge.AdapterSpec{}, usageError{fmt.Errorf("merge: --adapter is empty; give a PEFT adapter folder, DIR or DIR:WEIGHT")}
	}
	i := strings.LastIndexByte(arg, ':')
	if i > 0 {
		dir, suffix := arg[:i], arg[i+1:]
		if w, err := strconv.ParseFloat(suffix, 64); err == nil {
			if mergeIsDir(arg) && !mergeIsDir(dir) {
				return merge.AdapterSpec{Dir: arg, Weight: 1}, nil
			}
			if math.IsNaN(w) || math.IsInf(w, 0) {
				return merge.AdapterSpec{}, usageError{fmt.Errorf("merge: --adapter %s: the weight %q is not a finite number; write DIR:0.5", arg, suffix)}
			}
			return merge.AdapterSpec{Dir: dir, Weight: w}, nil
		}
		if !mergeIsDir(arg) {
			return merge.AdapterSpec{}, usageError{fmt.Errorf("merge: --adapter %s: no such folder, and %q after the last ':' is not a number; write DIR or DIR:WEIGHT with a numeric weight (DIR:0.5)", arg, suffix)}
		}
	}
	return merge.AdapterSpec{Dir: arg, Weight: 1}, nil
}

func mergeIsDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

func runMerge(s *streams, o *mergeOptions) error {
	if o.Base == "" || o.Out == "" || len(o.Adapter) == 0 {
		return usageError{fmt.Errorf("merge: need --base DIR, at least one --adapter DIR[:weight] and --out DIR (see 'loractl merge --help')")}
	}
	opt := merge.Options{Base: o.Base, Out: o.Out, Method: merge.Method(o.Method), Density: o.Density, Rank: o.Rank,
		Seed: o.Seed, DType: o.DType, Overwrite: o.Overwrite, Log: s.Err}
	if !isMethod(opt.Method) {
		return usageError{fmt.Errorf("merge: unknown --method %q; choose one of %s", o.Method, strings.Join(methodNames(), ", "))}
	}
	if opt.Method != merge.SVD && o.Rank != 0 {
		// Any other method: --rank k truncates each adapter to its leading k ranks (DyLoRA).
		opt.Rank, opt.Truncate = 0, o.Rank
	}
	size, err := merge.ParseSize(o.MaxShardSize)
	if err != nil {
		return usageError{fmt.Errorf("merge: --max-shard-size: %w", err)}
	}
	opt.MaxShardSize = size
	for _, a := range o.Adapter {
		spec, err := parseAdapterArg(a)
		if err != nil {
			return err
		}
		opt.Adapters = append(opt.Adapters, spec)
	}
	sum, err := merge.Run(opt)
	if err != nil {
		return err
	}
	fmt.Fprintf(s.Err, "merged %d adapter(s) (%s) into %s: %d tensors (%d adapted), %s of %s in %d file(s), %.2fs\n",
		len(sum.Adapters), sum.Method, sum.Out, sum.Tensors, sum.AdaptedTensors, mergeBytes(sum.OutputBytes), sum.DType, len(sum.Files), sum.Seconds)
	fmt.Fprintf(s.Err, "peak memory: heap in use %s (at start %s), merge buffers %s; base %s, largest tensor %s, adapters %s\n",
		mergeBytes(int64(sum.PeakHeapBytes)), mergeBytes(int64(sum.StartHeapBytes)), mergeBytes(sum.PeakBufferBytes),
		mergeBytes(sum.BaseBytes), mergeBytes(sum.LargestTensorBytes), mergeBytes(sum.AdapterBytes))
	if o.JSON {
		enc := json.NewEncoder(s.Out)
		enc.SetIndent("", "  ")
		return enc.Encode(sum)
	}
	return nil
}

func isMethod(m merge.Method) bool {
	for _, x := range merge.Methods {
		if x == m {
			return true
		}
	}
	return false
}

// mergeBytes prints n bytes in KiB/MiB/GiB.
func mergeBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.2f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
