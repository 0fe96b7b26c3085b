package gguf

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/loractl/loractl/internal/model"
	"github.com/loractl/loractl/internal/safetensors"
)

// Model file formats of ExportModel.
const (
	FormatF16  = "gguf-f16"
	FormatQ8_0 = "gguf-q8_0"
	FormatQ4_0 = "gguf-q4_0"
)

// llama.cpp's general.file_type values (llama_ftype) for the three formats.
var fileTypes = map[string]uint32{FormatF16: 1, FormatQ8_0: 7, FormatQ4_0: 2}

// matrixTypes is the type of a quantizable matrix in each format.
var matrixTypes = map[string]GGMLType{FormatF16: F16, FormatQ8_0: Q8_0, FormatQ4_0: Q4_0}

// quantVersion is ggml's GGML_QUANT_VERSION, which the converter always writes.
const quantVersion = 2

// ExportReport says what ExportModel wrote.
type ExportReport struct {
	Out       string
	Format    string
	Tensors   int
	ByType    map[GGMLType]int
	Fallbacks []string // tensors written as F16 because their rows are not whole blocks
	Notes     []string // other choices worth telling the user
	Bytes     int64    // size of the file
	Vocab     string   // tokenizer.ggml.model and where it came from
}

// hfToGGUF maps the per-block HF names to llama.cpp's (blk.N.<name>.weight).
var hfToGGUF = []struct{ hf, gguf string }{
	{"input_layernorm", "attn_norm"},
	{"self_attn.q_proj", "attn_q"},
	{"self_attn.k_proj", "attn_k"},
	{"self_attn.v_proj", "attn_v"},
	{"self_attn.o_proj", "attn_output"},
	{"post_attention_layernorm", "ffn_norm"},
	{"mlp.gate_proj", "ffn_gate"},
	{"mlp.up_proj", "ffn_up"},
	{"mlp.down_proj", "ffn_down"},
}

// CheckArchitecture returns an error unless cfg is a model that llama.cpp's "llama"
// architecture runs as it is: llama or mistral, without biases. Qwen2 (q/k/v biases) and Qwen3
// (per-head q/k norms) are separate llama.cpp architectures with other tensor layouts (no
// q/k permutation) and are not exported.
func CheckArchitecture(cfg *model.Config) error {
	switch cfg.ModelType {
	case "llama", "mistral":
	case "qwen2", "qwen3":
		return fmt.Errorf("%s: model_type %s is not supported for GGUF export: llama.cpp runs it as its own %q architecture (%s), which loractl does not write; only llama and mistral models can be exported (convert this one with llama.cpp's convert_hf_to_gguf.py)",
			cfg.Path, cfg.ModelType, cfg.ModelType, map[string]string{"qwen2": "q/k/v biases", "qwen3": "per-head q/k norms, no q/k row permutation"}[cfg.ModelType])
	default:
		return fmt.Errorf("%s: model_type %s is not supported for GGUF export (only llama and mistral)", cfg.Path, cfg.ModelType)
	}
	if cfg.AttentionBias || cfg.MLPBias {
		return fmt.Errorf("%s: attention_bias/mlp_bias models are not supported for GGUF export yet (only bias-free llama and mistral)", cfg.Path)
	}
	return nil
}

// PermuteRows reorders the rows of a q or k projection (rows × cols, row-major) as llama.cpp's
// converter does (LlamaModel.permute): within each of heads groups of rows, the two halves of
// the head (HF's rotate_half layout) are interleaved, so that row 2j+i of a head is row
// i·(D/2)+j of the source, D = rows/heads. This is the layout llama.cpp's RoPE (pairs of
// adjacent values) expects.
func PermuteRows(w []float32, rows, cols, heads int) []float32 {
	out := make([]float32, len(w))
	d := rows / heads
	half := d / 2
	for h := 0; h < heads; h++ {
		for i := 0; i < 2; i++ {
			for j := 0; j < half; j++ {
				src := h*d + i*half + j
				dst := h*d + 2*j + i
				copy(out[dst*cols:(dst+1)*cols], w[src*cols:(src+1)*cols])
			}
		}
	}
	return out
}

// UnpermuteRows inverts PermuteRows.
func UnpermuteRows(w []float32, rows, cols, heads int) []float32 {
	out := make([]float32, len(w))
	d := rows / heads
	half := d / 2
	for h := 0; h < heads; h++ {
		for i := 0; i < 2; i++ {
			for j := 0; j < half; j++ {
				src := h*d + 2*j + i
				dst := h*d + i*half + j
				copy(out[dst*cols:(dst+1)*cols], w[src*cols:(src+1)*cols])
			}
		}
	}
	return out
}

// archKV is the general.* and llama.* metadata of a model as the converter writes it.
func archKV(cfg *model.Config, name string) []KV {
	kv := []KV{
		{"general.architecture", "llama"},
		{"general.type", "model"},
		{"general.name", name},
		{"llama.block_count", uint32(cfg.NumHiddenLayers)},
		{"llama.context_length", uint32(cfg.MaxPositionEmbeddings)},
		{"llama.embedding_length", uint32(cfg.HiddenSize)},
		{"llama.feed_forward_length", uint32(cfg.IntermediateSize)},
		{"llama.attention.head_count", uint32(cfg.NumAttentionHeads)},
		{"llama.attention.head_count_kv", uint32(cfg.NumKeyValueHeads)},
		{"llama.rope.freq_base", float32(cfg.RopeTheta)},
		{"llama.attention.layer_norm_rms_epsilon", float32(cfg.RMSNormEps)},
		{"llama.attention.key_length", uint32(cfg.HeadDim)},
		{"llama.attention.value_length", uint32(cfg.HeadDim)},
	}
	if s := cfg.RopeScaling; s != nil && s.Type == "linear" {
		kv = append(kv, KV{"llama.rope.scaling.type", "linear"}, KV{"llama.rope.scaling.factor", float32(s.Factor)})
	}
	kv = append(kv,
		KV{"llama.vocab_size", uint32(cfg.VocabSize)},
		KV{"llama.rope.dimension_count", uint32(cfg.HeadDim)},
	)
	return kv
}

// llama3RopeFactors is the rope_freqs tensor the converter generates for rope_type llama3:
// one factor per rotated pair.
func llama3RopeFactors(cfg *model.Config) []float32 {
	s := cfg.RopeScaling
	dim := cfg.HeadDim
	old := float64(s.OriginalMaxPositionEmbeddings)
	if old <= 0 {
		old = 8192
	}
	lowWave, highWave := old/s.LowFreqFactor, old/s.HighFreqFactor
	out := make([]float32, 0, dim/2)
	for i := 0; i < dim; i += 2 {
		freq := 1 / math.Pow(cfg.RopeTheta, float64(float32(i)/float32(dim)))
		wave := 2 * math.Pi / freq
		switch {
		case wave < highWave:
			out = append(out, 1)
		case wave > lowWave:
			out = append(out, float32(s.Factor))
		default:
			smooth := (old/wave - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor)
			out = append(out, float32(1/((1-smooth)/s.Factor+smooth)))
		}
	}
	return out
}

// source is one output tensor: where its values come from and how they are transformed.
type source struct {
	name    string // GGUF name
	hf      string // checkpoint name ("" for generated tensors)
	shape   []int  // torch shape (out, in) or (n)
	permute int    // > 0: PermuteRows with this many heads
	vals    []float32
}

// ExportModel converts the HuggingFace model folder dir into a single-file GGUF model at out in
// format (FormatF16, FormatQ8_0 or FormatQ4_0), as llama.cpp's convert_hf_to_gguf.py does for
// the llama architecture. Tensors are read, converted and written one at a time; the file is
// written atomically (see WriteFile).
func ExportModel(dir, out, format string, overwrite bool) (*ExportReport, error) {
	mt, ok := matrixTypes[format]
	if !ok {
		return nil, fmt.Errorf("GGUF format %q: want %s, %s or %s", format, FormatF16, FormatQ8_0, FormatQ4_0)
	}
	cfg, err := model.LoadConfig(dir)
	if err != nil {
		return nil, err
	}
	if err := CheckArchitecture(cfg); err != nil {
		return nil, err
	}
	if st, err := os.Stat(out); err == nil && !overwrite {
		if st.IsDir() {
			return nil, fmt.Errorf("%s is a folder; --out must name a .gguf file", out)
		}
		return nil, fmt.Errorf("%s already exists; pass --overwrite to replace it, or choose another --out", out)
	}
	vocab, err := LoadVocab(dir, cfg)
	if err != nil {
		return nil, err
	}
	ck, err := safetensors.OpenCheckpoint(dir)
	if err != nil {
		return nil, err
	}
	defer ck.Close()

	C, F, V := cfg.HiddenSize, cfg.IntermediateSize, cfg.VocabSize
	Q, KVD := cfg.QDim(), cfg.KVDim()
	var srcs []source
	if s := cfg.RopeScaling; s != nil && s.Type == "llama3" {
		f := llama3RopeFactors(cfg)
		srcs = append(srcs, source{name: "rope_freqs.weight", shape: []int{len(f)}, vals: f})
	}
	srcs = append(srcs, source{name: "token_embd.weight", hf: "model.embed_tokens.weight", shape: []int{V, C}})
	dims := map[string][]int{
		"input_layernorm": {C}, "post_attention_layernorm": {C},
		"self_attn.q_proj": {Q, C}, "self_attn.k_proj": {KVD, C}, "self_attn.v_proj": {KVD, C}, "self_attn.o_proj": {C, Q},
		"mlp.gate_proj": {F, C}, "mlp.up_proj": {F, C}, "mlp.down_proj": {C, F},
	}
	for l := 0; l < cfg.NumHiddenLayers; l++ {
		for _, m := range hfToGGUF {
			s := source{name: fmt.Sprintf("blk.%d.%s.weight", l, m.gguf), hf: fmt.Sprintf("model.layers.%d.%s.weight", l, m.hf), shape: dims[m.hf]}
			switch m.hf {
			case "self_attn.q_proj":
				s.permute = cfg.NumAttentionHeads
			case "self_attn.k_proj":
				s.permute = cfg.NumKeyValueHeads
			}
			srcs = append(srcs, s)
		}
	}
	srcs = append(srcs, source{name: "output_norm.weight", hf: "model.norm.weight", shape: []int{C}})
	_, hasHead := ck.Info("lm_head.weight")
	rep := &ExportReport{Out: out, Format: format, ByType: map[GGMLType]int{}, Vocab: vocab.Model + " from " + filepath.Base(vocab.Source)}
	switch {
	case !cfg.TieWordEmbeddings:
		srcs = append(srcs, source{name: "output.weight", hf: "lm_head.weight", shape: []int{V, C}})
	case hasHead:
		rep.Notes = append(rep.Notes, "tie_word_embeddings is set: lm_head.weight is not written (llama.cpp uses token_embd.weight)")
	}

	if cfg.SlidingWindow > 0 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("sliding_window %d is not written: llama.cpp's llama architecture attends to the whole context, as the converter's output does", cfg.SlidingWindow))
	}

	// Every checkpoint tensor must be accounted for.
	used := map[string]bool{"lm_head.weight": hasHead && cfg.TieWordEmbeddings}
	for _, s := range srcs {
		if s.hf == "" {
			continue
		}
		used[s.hf] = true
		info, ok := ck.Info(s.hf)
		if !ok {
			return nil, fmt.Errorf("%s: the checkpoint has no tensor %s, which a %s model with these dimensions needs", ck.Path(), s.hf, cfg.ModelType)
		}
		if fmt.Sprint(info.Shape) != fmt.Sprint(s.shape) {
			return nil, fmt.Errorf("%s: tensor %s has shape %v, but config.json implies %v", ck.Path(), s.hf, info.Shape, s.shape)
		}
		if !info.DType.IsFloat() {
			return nil, fmt.Errorf("%s: tensor %s is %s; GGUF export reads float checkpoints (F32, BF16, F16), not quantized folders: export the original model", ck.Path(), s.hf, info.DType)
		}
	}
	for _, n := range ck.Names() {
		if !used[n] && !strings.HasSuffix(n, ".rotary_emb.inv_freq") {
			return nil, fmt.Errorf("%s: tensor %s has no place in a llama GGUF; this checkpoint is not a plain %s model", ck.Path(), n, cfg.ModelType)
		}
	}

	// Types, as the converter (gguf-f16, gguf-q8_0) and llama-quantize (gguf-q4_0) choose them.
	tensors := make([]Tensor, len(srcs))
	for i, s := range srcs {
		s := s
		t := mt
		switch {
		case len(s.shape) == 1 || strings.HasSuffix(s.name, "_norm.weight"):
			t = F32
		case format == FormatQ4_0 && (s.name == "output.weight" || (s.name == "token_embd.weight" && cfg.TieWordEmbeddings)):
			// llama-quantize gives the output matrix Q6_K, or Q8_0 when its rows are not a
			// multiple of 256; loractl writes no K-quants, so Q8_0.
			t = Q8_0
			rep.Notes = append(rep.Notes, fmt.Sprintf("%s is Q8_0 (llama-quantize keeps the output matrix at higher precision)", s.name))
		}
		if (t == Q8_0 || t == Q4_0) && s.shape[len(s.shape)-1]%BlockSize != 0 {
			rep.Fallbacks = append(rep.Fallbacks, fmt.Sprintf("%s (rows of %d values are not a multiple of %d)", s.name, s.shape[len(s.shape)-1], BlockSize))
			t = F16
		}
		rep.ByType[t]++
		shape := make([]uint64, len(s.shape))
		for k, d := range s.shape {
			shape[len(s.shape)-1-k] = uint64(d) // ggml ne: innermost first
		}
		tensors[i] = Tensor{Name: s.name, Shape: shape, Type: t, Data: func() ([]byte, error) {
			vals := s.vals
			if s.hf != "" {
				var err error
				if vals, err = ck.Float32(s.hf); err != nil {
					return nil, err
				}
				for k, v := range vals {
					if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
						return nil, fmt.Errorf("%s: tensor %s holds %v at index %d; the weights are damaged, not numbers", ck.Path(), s.hf, v, k)
					}
				}
			}
			if s.permute > 0 {
				vals = PermuteRows(vals, s.shape[0], s.shape[1], s.permute)
			}
			return Encode(t, vals)
		}}
	}
	rep.Tensors = len(tensors)

	name := filepath.Base(filepath.Clean(dir))
	kv := archKV(cfg, name)
	kv = append(kv, KV{"general.file_type", fileTypes[format]}, KV{"general.quantization_version", uint32(quantVersion)})
	kv = append(kv, vocab.KV()...)
	if err := WriteFile(out, overwrite, kv, tensors); err != nil {
		return nil, err
	}
	if st, err := os.Stat(out); err == nil {
		rep.Bytes = st.Size()
	}
	return rep, nil
}
