package inspect

import (
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
)

// WriteText prints r for a person: a summary, then the tensor table.
func (r *Report) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, format string, args ...any) { fmt.Fprintf(tw, "%s\t%s\n", k, fmt.Sprintf(format, args...)) }

	row("path:", "%s", r.Path)
	switch r.Kind {
	case KindModel:
		c := r.Config
		arch := r.Architecture
		if arch == "" {
			arch = "(no architectures field)"
		}
		row("kind:", "model: %s, model_type %s", arch, c.ModelType)
		row("layers:", "%d, hidden %d, intermediate %d, vocab %d", c.NumHiddenLayers, c.HiddenSize, c.IntermediateSize, c.VocabSize)
		row("attention:", "%d heads, %d kv heads (GQA %d:1), head_dim %d", c.NumAttentionHeads, c.NumKeyValueHeads, c.NumAttentionHeads/c.NumKeyValueHeads, c.HeadDim)
		extras := []string{}
		if c.QKVBias() {
			extras = append(extras, "q/k/v bias")
		}
		if c.OBias() {
			extras = append(extras, "o bias")
		}
		if c.QKNorm() {
			extras = append(extras, "q/k RMSNorm")
		}
		if c.SlidingWindow > 0 {
			extras = append(extras, fmt.Sprintf("sliding window %d", c.SlidingWindow))
		}
		if len(extras) > 0 {
			row("", "%s", strings.Join(extras, ", "))
		}
		row("positions:", "max %d, rope_theta %g, rope_scaling %s", c.MaxPositionEmbeddings, c.RopeTheta, ropeText(r))
		row("norm:", "RMSNorm eps %g", c.RMSNormEps)
		row("embeddings:", "tie_word_embeddings %v", c.TieWordEmbeddings)
		row("tokens:", "bos %d, eos %v", c.BOSTokenID, c.EOSTokenIDs)
		if c.TorchDType != "" {
			row("torch_dtype:", "%s", c.TorchDType)
		}
		row("params (config):", "%s", commas(c.NumParams()))
		if t := r.Tokenizer; t != nil {
			if t.Error != "" {
				row("tokenizer:", "%s: %s", t.File, t.Error)
			} else {
				row("tokenizer:", "%s, vocab %d, bos %d, eos %d", t.File, t.VocabSize, t.BOS, t.EOS)
			}
		} else {
			row("tokenizer:", "none (no tokenizer.json or tokenizer.model)")
		}
	case KindAdapter:
		row("kind:", "adapter")
		keys := make([]string, 0, len(r.AdapterConfig))
		for k := range r.AdapterConfig {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if v := r.AdapterConfig[k]; v != nil {
				row("  "+k+":", "%v", v)
			}
		}
	default:
		row("kind:", "safetensors file")
	}
	row("files:", "%s", strings.Join(r.Files, ", "))
	row("parameters:", "%s in %d tensors (%s)", commas(r.NumParams), len(r.Tensors), human(r.NumBytes))
	for i, d := range r.DTypes {
		k := ""
		if i == 0 {
			k = "dtypes:"
		}
		share := 0.0
		if r.NumParams > 0 {
			share = 100 * float64(d.Params) / float64(r.NumParams)
		}
		row(k, "%s: %d tensors, %s params (%.1f%%), %s", d.DType, d.Tensors, commas(d.Params), share, human(d.Bytes))
	}
	if len(r.Metadata) > 0 {
		keys := make([]string, 0, len(r.Metadata))
		for k := range r.Metadata {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		kv := make([]string, len(keys))
		for i, k := range keys {
			kv[i] = k + "=" + r.Metadata[k]
		}
		row("metadata:", "%s", strings.Join(kv, ", "))
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	// AlignRight right-aligns every column; pad names on the left ourselves to keep them flush.
	width := 4
	for _, t := range r.Tensors {
		width = max(width, len(t.Name))
	}
	sharded := len(r.Files) > 1
	head := fmt.Sprintf("%-*s\tDTYPE\tSHAPE\tBYTES\t", width, "NAME")
	if sharded {
		head += "FILE\t"
	}
	fmt.Fprintln(tw, head)
	for _, t := range r.Tensors {
		line := fmt.Sprintf("%-*s\t%s\t%s\t%s\t", width, t.Name, t.DType, shapeText(t.Shape), commas(t.Bytes))
		if sharded {
			line += t.File + "\t"
		}
		fmt.Fprintln(tw, line)
	}
	return tw.Flush()
}

func ropeText(r *Report) string {
	s := r.Config.RopeScaling
	if s == nil {
		return "none"
	}
	if s.Type == "llama3" {
		return fmt.Sprintf("llama3 (factor %g, low %g, high %g, original %d)", s.Factor, s.LowFreqFactor, s.HighFreqFactor, s.OriginalMaxPositionEmbeddings)
	}
	return fmt.Sprintf("%s (factor %g)", s.Type, s.Factor)
}

func shapeText(shape []int) string {
	parts := make([]string, len(shape))
	for i, d := range shape {
		parts[i] = strconv.Itoa(d)
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

// commas writes n with thousands separators: 1234567 -> "1,234,567".
func commas(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	if neg {
		s = s[1:]
	}
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// human writes a byte count in binary units.
func human(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, u := float64(n), 0
	for v >= unit && u < 4 {
		v /= unit
		u++
	}
	return fmt.Sprintf("%.1f %s", v, []string{"B", "KiB", "MiB", "GiB", "TiB"}[u])
}
