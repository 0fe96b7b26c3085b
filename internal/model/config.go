package model

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strings"
)

// ConfigFile is the name of the Hugging Face model configuration inside a model directory.
const ConfigFile = "config.json"

// Supported model_type values. They share the Llama block (RMSNorm, RoPE, GQA attention,
// SwiGLU MLP) and differ only in biases and per-head q/k norms:
//
//	llama    q/k/v/o bias when attention_bias; gate/up/down bias when mlp_bias
//	mistral  no biases
//	qwen2    q/k/v bias always, no o_proj bias
//	qwen3    q_norm/k_norm (per-head RMSNorm before RoPE); q/k/v/o bias when attention_bias
var supportedTypes = []string{"llama", "mistral", "qwen2", "qwen3"}

// RoPEScaling is the rope_scaling entry of config.json (nil in Config when absent, null or
// "default").
type RoPEScaling struct {
	Type   string  `json:"rope_type"` // "linear" or "llama3"
	Factor float64 `json:"factor"`    // both types
	// llama3 only, as in transformers' _compute_llama3_parameters.
	LowFreqFactor                 float64 `json:"low_freq_factor,omitempty"`
	HighFreqFactor                float64 `json:"high_freq_factor,omitempty"`
	OriginalMaxPositionEmbeddings int     `json:"original_max_position_embeddings,omitempty"`
}

// Config is the part of a Hugging Face config.json that a Llama-family forward needs, with
// transformers' defaults filled in.
type Config struct {
	Path string `json:"-"` // the config.json it was read from (for error messages)

	ModelType             string       `json:"model_type"`
	HiddenSize            int          `json:"hidden_size"`         // C
	IntermediateSize      int          `json:"intermediate_size"`   // F, the MLP width
	NumHiddenLayers       int          `json:"num_hidden_layers"`   // L
	NumAttentionHeads     int          `json:"num_attention_heads"` // NH
	NumKeyValueHeads      int          `json:"num_key_value_heads"` // NKV, default NH
	HeadDim               int          `json:"head_dim"`            // D, default HiddenSize/NumAttentionHeads
	VocabSize             int          `json:"vocab_size"`          // V
	RMSNormEps            float64      `json:"rms_norm_eps"`
	RopeTheta             float64      `json:"rope_theta"`   // default 10000
	RopeScaling           *RoPEScaling `json:"rope_scaling"` // nil: plain RoPE
	MaxPositionEmbeddings int          `json:"max_position_embeddings"`
	TieWordEmbeddings     bool         `json:"tie_word_embeddings"` // lm_head shares embed_tokens
	AttentionBias         bool         `json:"attention_bias"`      // the attention_bias field as written
	MLPBias               bool         `json:"mlp_bias"`            // the mlp_bias field as written (llama)
	BOSTokenID            int          `json:"bos_token_id"`        // -1 when absent or null
	EOSTokenIDs           []int        `json:"eos_token_id"`
	TorchDType            string       `json:"torch_dtype,omitempty"`    // torch_dtype (or dtype), e.g. "bfloat16"; informational
	SlidingWindow         int          `json:"sliding_window,omitempty"` // > 0 when sliding-window attention is active (mistral, use_sliding_window)
}

// rawConfig mirrors config.json; pointers tell absent fields from zero values.
type rawConfig struct {
	ModelType             *string         `json:"model_type"`
	HiddenSize            *int            `json:"hidden_size"`
	IntermediateSize      *int            `json:"intermediate_size"`
	NumHiddenLayers       *int            `json:"num_hidden_layers"`
	NumAttentionHeads     *int            `json:"num_attention_heads"`
	NumKeyValueHeads      *int            `json:"num_key_value_heads"`
	HeadDim               *int            `json:"head_dim"`
	VocabSize             *int            `json:"vocab_size"`
	RMSNormEps            *float64        `json:"rms_norm_eps"`
	RopeTheta             *float64        `json:"rope_theta"`
	RopeScaling           json.RawMessage `json:"rope_scaling"`
	MaxPositionEmbeddings *int            `json:"max_position_embeddings"`
	TieWordEmbeddings     *bool           `json:"tie_word_embeddings"`
	AttentionBias         *bool           `json:"attention_bias"`
	MLPBias               *bool           `json:"mlp_bias"`
	HiddenAct             *string         `json:"hidden_act"`
	BOSTokenID            json.RawMessage `json:"bos_token_id"`
	EOSTokenID            json.RawMessage `json:"eos_token_id"`
	TorchDType            *string         `json:"torch_dtype"`
	DType                 *string         `json:"dtype"`
	SlidingWindow         *int            `json:"sliding_window"`
	UseSlidingWindow      *bool           `json:"use_sliding_window"`
}

// defaultMaxPositions is transformers' max_position_embeddings default per model type.
var defaultMaxPositions = map[string]int{"llama": 2048, "mistral": 4096 * 32, "qwen2": 32768, "qwen3": 32768}

// LoadConfig reads dir/config.json. dir may also be the path of a config.json file.
func LoadConfig(dir string) (*Config, error) {
	path := filepath.Join(dir, ConfigFile)
	if st, err := os.Stat(dir); err == nil && !st.IsDir() {
		path = dir
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: no %s in model directory %s; point at a Hugging Face model folder (config.json + *.safetensors)", path, ConfigFile, dir)
	}
	if err != nil {
		return nil, fmt.Errorf("read model config: %w", err)
	}
	return ParseConfig(data, path)
}

// ParseConfig parses the contents of a config.json; path is used in error messages only.
func ParseConfig(data []byte, path string) (*Config, error) {
	var raw rawConfig
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("%s: not a valid config.json: %w", path, err)
	}
	fail := func(format string, args ...any) error {
		return fmt.Errorf("%s: %s", path, fmt.Sprintf(format, args...))
	}
	if raw.ModelType == nil {
		return nil, fail("no model_type field (supported: %s)", strings.Join(supportedTypes, ", "))
	}
	c := &Config{Path: path, ModelType: *raw.ModelType}
	if _, ok := defaultMaxPositions[c.ModelType]; !ok {
		return nil, fail("model_type %q is not supported (supported: %s)", c.ModelType, strings.Join(supportedTypes, ", "))
	}

	// Required dimensions.
	for _, f := range []struct {
		name string
		src  *int
		dst  *int
	}{
		{"hidden_size", raw.HiddenSize, &c.HiddenSize},
		{"intermediate_size", raw.IntermediateSize, &c.IntermediateSize},
		{"num_hidden_layers", raw.NumHiddenLayers, &c.NumHiddenLayers},
		{"num_attention_heads", raw.NumAttentionHeads, &c.NumAttentionHeads},
		{"vocab_size", raw.VocabSize, &c.VocabSize},
	} {
		if f.src == nil {
			return nil, fail("missing required field %s", f.name)
		}
		if *f.src <= 0 {
			return nil, fail("%s must be positive, got %d", f.name, *f.src)
		}
		*f.dst = *f.src
	}

	// Optional fields with transformers' defaults.
	c.NumKeyValueHeads = c.NumAttentionHeads
	if raw.NumKeyValueHeads != nil {
		c.NumKeyValueHeads = *raw.NumKeyValueHeads
	}
	if raw.HeadDim != nil {
		c.HeadDim = *raw.HeadDim
	} else if c.ModelType == "qwen3" {
		c.HeadDim = 128 // transformers' Qwen3Config default, not hidden/heads
	} else {
		if c.HiddenSize%c.NumAttentionHeads != 0 {
			return nil, fail("hidden_size %d is not divisible by num_attention_heads %d and head_dim is not given", c.HiddenSize, c.NumAttentionHeads)
		}
		c.HeadDim = c.HiddenSize / c.NumAttentionHeads
	}
	c.RMSNormEps = 1e-6
	if raw.RMSNormEps != nil {
		c.RMSNormEps = *raw.RMSNormEps
	}
	c.RopeTheta = 10000
	if raw.RopeTheta != nil {
		c.RopeTheta = *raw.RopeTheta
	}
	c.MaxPositionEmbeddings = defaultMaxPositions[c.ModelType]
	if raw.MaxPositionEmbeddings != nil {
		c.MaxPositionEmbeddings = *raw.MaxPositionEmbeddings
	}
	if raw.TieWordEmbeddings != nil {
		c.TieWordEmbeddings = *raw.TieWordEmbeddings
	}
	if raw.AttentionBias != nil {
		c.AttentionBias = *raw.AttentionBias
	}
	if raw.MLPBias != nil {
		c.MLPBias = *raw.MLPBias
	}
	if raw.TorchDType != nil {
		c.TorchDType = *raw.TorchDType
	} else if raw.DType != nil {
		c.TorchDType = *raw.DType
	}
	if raw.HiddenAct != nil && *raw.HiddenAct != "silu" {
		return nil, fail("hidden_act %q is not supported (only silu, the SwiGLU MLP)", *raw.HiddenAct)
	}
	if raw.SlidingWindow != nil && *raw.SlidingWindow > 0 {
		// Mistral always applies its window; Qwen only with use_sliding_window.
		if c.ModelType == "mistral" || (raw.UseSlidingWindow != nil && *raw.UseSlidingWindow) {
			c.SlidingWindow = *raw.SlidingWindow
		}
	}

	var err error
	if c.BOSTokenID, err = parseBOS(raw.BOSTokenID); err != nil {
		return nil, fail("bos_token_id: %v", err)
	}
	if c.EOSTokenIDs, err = parseEOS(raw.EOSTokenID); err != nil {
		return nil, fail("eos_token_id: %v", err)
	}
	if c.RopeScaling, err = parseRoPEScaling(raw.RopeScaling); err != nil {
		return nil, fail("rope_scaling: %v", err)
	}
	if err := c.validate(); err != nil {
		return nil, fail("%v", err)
	}
	return c, nil
}

// validate checks that the dimensions fit together.
func (c *Config) validate() error {
	switch {
	case c.NumKeyValueHeads <= 0:
		return fmt.Errorf("num_key_value_heads must be positive, got %d", c.NumKeyValueHeads)
	case c.NumAttentionHeads%c.NumKeyValueHeads != 0:
		return fmt.Errorf("num_attention_heads %d is not a multiple of num_key_value_heads %d", c.NumAttentionHeads, c.NumKeyValueHeads)
	case c.HeadDim <= 0 || c.HeadDim%2 != 0:
		return fmt.Errorf("head_dim must be a positive even number (RoPE rotates pairs), got %d", c.HeadDim)
	case !(c.RMSNormEps > 0):
		return fmt.Errorf("rms_norm_eps must be positive, got %g", c.RMSNormEps)
	case !(c.RopeTheta > 0) || math.IsInf(c.RopeTheta, 0):
		return fmt.Errorf("rope_theta must be a positive number, got %g", c.RopeTheta)
	case c.MaxPositionEmbeddings <= 0:
		return fmt.Errorf("max_position_embeddings must be positive, got %d", c.MaxPositionEmbeddings)
	case c.MLPBias && c.ModelType != "llama":
		return fmt.Errorf("mlp_bias is only defined for llama, not %s", c.ModelType)
	}
	for _, id := range c.EOSTokenIDs {
		if id < 0 || id >= c.VocabSize {
			return fmt.Errorf("eos_token_id %d is outside the vocabulary [0, %d)", id, c.VocabSize)
		}
	}
	if c.BOSTokenID >= c.VocabSize {
		return fmt.Errorf("bos_token_id %d is outside the vocabulary [0, %d)", c.BOSTokenID, c.VocabSize)
	}
	return nil
}

// parseBOS reads an int or null; absent or null gives -1.
func parseBOS(raw json.RawMessage) (int, error) {
	if len(raw) == 0 || bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		return -1, nil
	}
	var id int
	if err := json.Unmarshal(raw, &id); err != nil {
		return 0, fmt.Errorf("want an integer or null, got %s", raw)
	}
	return id, nil
}

// parseEOS reads an int, a list of ints, or null.
func parseEOS(raw json.RawMessage) ([]int, error) {
	if len(raw) == 0 || bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		return nil, nil
	}
	var id int
	if err := json.Unmarshal(raw, &id); err == nil {
		return []int{id}, nil
	}
	var ids []int
	if err := json.Unmarshal(raw, &ids); err != nil {
		return nil, fmt.Errorf("want an integer or a list of integers, got %s", raw)
	}
	return ids, nil
}

// parseRoPEScaling reads the rope_scaling object. The type is under "rope_type" (current
// transformers) or "type" (older files).
func parseRoPEScaling(raw json.RawMessage) (*RoPEScaling, error) {
	if len(raw) == 0 || bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		return nil, nil
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("want an object or null, got %s", raw)
	}
	typ, _ := m["rope_type"].(string)
	if typ == "" {
		typ, _ = m["type"].(string)
	}
	num := func(key string) (float64, error) {
		v, ok := m[key].(float64)
		if !ok {
			return 0, fmt.Errorf("type %q needs a numeric %q field", typ, key)
		}
		return v, nil
	}
	switch typ {
	case "default":
		return nil, nil
	case "linear":
		f, err := num("factor")
		if err != nil {
			return nil, err
		}
		if !(f > 0) {
			return nil, fmt.Errorf("factor must be positive, got %g", f)
		}
		return &RoPEScaling{Type: typ, Factor: f}, nil
	case "llama3":
		s := &RoPEScaling{Type: typ}
		var err error
		if s.Factor, err = num("factor"); err != nil {
			return nil, err
		}
		if s.LowFreqFactor, err = num("low_freq_factor"); err != nil {
			return nil, err
		}
		if s.HighFreqFactor, err = num("high_freq_factor"); err != nil {
			return nil, err
		}
		orig, err := num("original_max_position_embeddings")
		if err != nil {
			return nil, err
		}
		s.OriginalMaxPositionEmbeddings = int(orig)
		if !(s.Factor > 0) || !(s.LowFreqFactor > 0) || !(s.HighFreqFactor > s.LowFreqFactor) || s.OriginalMaxPositionEmbeddings <= 0 {
			return nil, fmt.Errorf("llama3 needs factor > 0, 0 < low_freq_factor < high_freq_factor and original_max_position_embeddings > 0, got %g, %g, %g, %d",
				s.Factor, s.LowFreqFactor, s.HighFreqFactor, s.OriginalMaxPositionEmbeddings)
		}
		return s, nil
	case "":
		return nil, fmt.Errorf("no rope_type (or type) field in %s", raw)
	}
	return nil, fmt.Errorf("type %q is not supported (supported: default, linear, llama3)", typ)
}

// QKVBias reports whether q_proj, k_proj and v_proj have biases.
func (c *Config) QKVBias() bool {
	switch c.ModelType {
	case "qwen2":
		return true
	case "mistral":
		return false
	}
	return c.AttentionBias // llama, qwen3
}

// OBias reports whether o_proj has a bias.
func (c *Config) OBias() bool {
	return (c.ModelType == "llama" || c.ModelType == "qwen3") && c.AttentionBias
}

// QKNorm reports whether attention has per-head q_norm/k_norm (Qwen3).
func (c *Config) QKNorm() bool { return c.ModelType == "qwen3" }

// QDim returns the width of the query projection, NH·D.
func (c *Config) QDim() int { return c.NumAttentionHeads * c.HeadDim }

// KVDim returns the width of the key and value projections, NKV·D.
func (c *Config) KVDim() int { return c.NumKeyValueHeads * c.HeadDim }

// NumParams returns the number of parameters the config implies; a tied lm_head is counted
// once (with the embedding).
func (c *Config) NumParams() int64 {
	C, F, V := int64(c.HiddenSize), int64(c.IntermediateSize), int64(c.VocabSize)
	Q, KV := int64(c.QDim()), int64(c.KVDim())
	layer := 2*C + // input_layernorm, post_attention_layernorm
		Q*C + 2*KV*C + C*Q + // q, k, v, o
		3*C*F // gate, up, down
	if c.QKVBias() {
		layer += Q + 2*KV
	}
	if c.OBias() {
		layer += C
	}
	if c.QKNorm() {
		layer += 2 * int64(c.HeadDim)
	}
	if c.MLPBias {
		layer += 2*F + C
	}
	n := V*C + int64(c.NumHiddenLayers)*layer + C // embed_tokens, layers, norm
	if !c.TieWordEmbeddings {
		n += V * C // lm_head
	}
	return n
}

// RoPEInvFreq returns the D/2 inverse frequencies of the rotary embedding, as transformers
// computes them for rope_theta, head_dim and rope_scaling: inv_freq[i] = theta^(-2i/D), divided
// by factor for "linear", and for "llama3" divided by factor at long wavelengths, kept at short
// ones and interpolated in between (_compute_llama3_parameters). The arithmetic is float64,
// rounded to float32 at the end.
func (c *Config) RoPEInvFreq() []float32 {
	D := c.HeadDim
	inv := make([]float32, D/2) // (D/2,)
	s := c.RopeScaling
	for i := range inv {
		f := 1 / math.Pow(c.RopeTheta, float64(2*i)/float64(D))
		switch {
		case s == nil:
		case s.Type == "linear":
			f /= s.Factor
		case s.Type == "llama3":
			old := float64(s.OriginalMaxPositionEmbeddings)
			lowWavelen := old / s.LowFreqFactor   // longer than this: scaled by 1/factor
			highWavelen := old / s.HighFreqFactor // shorter than this: unchanged
			wavelen := 2 * math.Pi / f
			switch {
			case wavelen < highWavelen:
			case wavelen > lowWavelen:
				f /= s.Factor
			default:
				smooth := (old/wavelen - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor)
				f = (1-smooth)*f/s.Factor + smooth*f
			}
		}
		inv[i] = float32(f)
	}
	return inv
}
