package synth

import (
	"fmt"

	"github.com/loractl/loractl/internal/safetensors"
)

// LlamaShape is the shape of a random-init Llama (tied embeddings, no biases).
type LlamaShape struct {
	Dim, Layers, Heads, KVHeads, Hidden, Vocab int
}

// LlamaTensors returns the weights of a random-init Llama in Hugging Face names, F32: every
// matrix drawn from N(0, std²) in a fixed order from one generator seeded with seed, every norm
// weight 1; lm_head is tied to embed_tokens and not stored. It also returns the parameter count.
func LlamaTensors(s LlamaShape, std float64, seed uint64) ([]safetensors.Tensor, int64, error) {
	if s.Heads <= 0 || s.KVHeads <= 0 || s.Dim%s.Heads != 0 {
		return nil, 0, fmt.Errorf("synth: bad Llama shape %+v", s)
	}
	r := NewRand(seed)
	C, F, V := s.Dim, s.Hidden, s.Vocab
	D := s.Dim / s.Heads
	Q, KV := s.Heads*D, s.KVHeads*D
	var out []safetensors.Tensor
	var params int64
	add := func(name string, fill func() float32, shape ...int) error {
		n := 1
		for _, d := range shape {
			n *= d
		}
		v := make([]float32, n) // shape, row-major
		for i := range v {
			v[i] = fill()
		}
		raw, err := safetensors.EncodeFloat32(safetensors.F32, v)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		out = append(out, safetensors.Tensor{Name: name, DType: safetensors.F32, Shape: shape, Data: raw})
		params += int64(n)
		return nil
	}
	normal := func() float32 { return float32(std * r.NormFloat64()) }
	one := func() float32 { return 1 }
	type spec struct {
		name  string
		fill  func() float32
		shape []int
	}
	specs := []spec{{"model.embed_tokens.weight", normal, []int{V, C}}}
	for l := 0; l < s.Layers; l++ {
		p := fmt.Sprintf("model.layers.%d.", l)
		specs = append(specs,
			spec{p + "input_layernorm.weight", one, []int{C}},
			spec{p + "self_attn.q_proj.weight", normal, []int{Q, C}},
			spec{p + "self_attn.k_proj.weight", normal, []int{KV, C}},
			spec{p + "self_attn.v_proj.weight", normal, []int{KV, C}},
			spec{p + "self_attn.o_proj.weight", normal, []int{C, Q}},
			spec{p + "post_attention_layernorm.weight", one, []int{C}},
			spec{p + "mlp.gate_proj.weight", normal, []int{F, C}},
			spec{p + "mlp.up_proj.weight", normal, []int{F, C}},
			spec{p + "mlp.down_proj.weight", normal, []int{C, F}},
		)
	}
	specs = append(specs, spec{"model.norm.weight", one, []int{C}})
	for _, sp := range specs {
		if err := add(sp.name, sp.fill, sp.shape...); err != nil {
			return nil, 0, err
		}
	}
	return out, params, nil
}

// LlamaConfig is the config.json of a random-init Llama (HF field names and order).
type LlamaConfig struct {
	Architectures         []string `json:"architectures"`
	ModelType             string   `json:"model_type"`
	HiddenSize            int      `json:"hidden_size"`
	IntermediateSize      int      `json:"intermediate_size"`
	NumHiddenLayers       int      `json:"num_hidden_layers"`
	NumAttentionHeads     int      `json:"num_attention_heads"`
	NumKeyValueHeads      int      `json:"num_key_value_heads"`
	HeadDim               int      `json:"head_dim"`
	VocabSize             int      `json:"vocab_size"`
	MaxPositionEmbeddings int      `json:"max_position_embeddings"`
	RMSNormEps            float64  `json:"rms_norm_eps"`
	RopeTheta             float64  `json:"rope_theta"`
	RopeScaling           any      `json:"rope_scaling"`
	HiddenAct             string   `json:"hidden_act"`
	TieWordEmbeddings     bool     `json:"tie_word_embeddings"`
	AttentionBias         bool     `json:"attention_bias"`
	AttentionDropout      float64  `json:"attention_dropout"`
	MLPBias               bool     `json:"mlp_bias"`
	InitializerRange      float64  `json:"initializer_range"`
	BOSTokenID            int      `json:"bos_token_id"`
	EOSTokenID            int      `json:"eos_token_id"`
	TorchDType            string   `json:"torch_dtype"`
	UseCache              bool     `json:"use_cache"`
}

// Config returns the config.json of the shape: tied embeddings, no biases, RoPE theta 10000,
// BOS 1 and EOS 2 (the synth tokenizer's ids), maxPos positions, initializer_range std.
func (s LlamaShape) Config(maxPos int, std float64) LlamaConfig {
	return LlamaConfig{
		Architectures: []string{"LlamaForCausalLM"}, ModelType: "llama",
		HiddenSize: s.Dim, IntermediateSize: s.Hidden, NumHiddenLayers: s.Layers,
		NumAttentionHeads: s.Heads, NumKeyValueHeads: s.KVHeads, HeadDim: s.Dim / s.Heads,
		VocabSize: s.Vocab, MaxPositionEmbeddings: maxPos,
		RMSNormEps: 1e-5, RopeTheta: 10000, HiddenAct: "silu", TieWordEmbeddings: true,
		InitializerRange: std, BOSTokenID: BOSID, EOSTokenID: EOSID,
		TorchDType: "float32", UseCache: true,
	}
}
