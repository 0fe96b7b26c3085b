package cli

import (
	"fmt"
	"sort"
	"strings"

	"github.com/loractl/loractl/internal/gguf"
)

// ggufOptions are what `loractl quantize` hands to the GGUF writer for --format gguf-*.
type ggufOptions struct {
	Model     string // HF model folder
	Out       string // output .gguf file
	Format    string // gguf-f16 | gguf-q8_0 | gguf-q4_0
	Overwrite bool
}

// runQuantizeGGUF writes a single-file GGUF model. quantize.go calls it for the gguf-* formats.
func runQuantizeGGUF(s *streams, o ggufOptions) error {
	switch o.Format {
	case gguf.FormatF16, gguf.FormatQ8_0, gguf.FormatQ4_0:
	default:
		return usageError{fmt.Errorf("quantize: --format %q: the GGUF formats are %s, %s and %s", o.Format, gguf.FormatF16, gguf.FormatQ8_0, gguf.FormatQ4_0)}
	}
	rep, err := gguf.ExportModel(o.Model, o.Out, o.Format, o.Overwrite)
	if err != nil {
		return err
	}
	for _, f := range rep.Fallbacks {
		fmt.Fprintf(s.Err, "note: %s written as F16\n", f)
	}
	for _, n := range rep.Notes {
		fmt.Fprintf(s.Err, "note: %s\n", n)
	}
	fmt.Fprintf(s.Err, "wrote %s (%s, %d tensors: %s; tokenizer %s): %.2f MiB\n",
		rep.Out, rep.Format, rep.Tensors, typeCounts(rep.ByType), rep.Vocab, float64(rep.Bytes)/(1<<20))
	return nil
}

// typeCounts formats tensor counts by type, e.g. "31 Q8_0, 11 F32, 5 F16".
func typeCounts(m map[gguf.GGMLType]int) string {
	var parts []string
	for t, n := range m {
		parts = append(parts, fmt.Sprintf("%d %s", n, t))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}
