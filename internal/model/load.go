package model

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strings"

	"github.com/loractl/loractl/internal/backend"
	"github.com/loractl/loractl/internal/quant"
	"github.com/loractl/loractl/internal/safetensors"
)

// layerWeights holds one decoder block's parameters on the backend. Optional entries are nil
// when the architecture has no such tensor.
type layerWeights struct {
	attnNorm backend.Buffer // (C) input_layernorm
	wq       backend.Buffer // (NH·D, C)
	wk       backend.Buffer // (NKV·D, C)
	wv       backend.Buffer // (NKV·D, C)
	wo       backend.Buffer // (C, NH·D)
	bq       backend.Buffer // (NH·D) or nil
	bk       backend.Buffer // (NKV·D) or nil
	bv       backend.Buffer // (NKV·D) or nil
	bo       backend.Buffer // (C) or nil
	qNorm    backend.Buffer // (D) or nil (qwen3)
	kNorm    backend.Buffer // (D) or nil (qwen3)
	mlpNorm  backend.Buffer // (C) post_attention_layernorm
	wGate    backend.Buffer // (F, C)
	wUp      backend.Buffer // (F, C)
	wDown    backend.Buffer // (C, F)
	bGate    backend.Buffer // (F) or nil (llama mlp_bias)
	bUp      backend.Buffer // (F) or nil
	bDown    backend.Buffer // (C) or nil
}

// tensorSpec is one tensor the config says the checkpoint must hold.
type tensorSpec struct {
	name  string
	shape []int
	dst   *backend.Buffer
}

// specs lists every tensor of the model, in checkpoint naming, with its expected shape and
// where it goes. lm_head is left out when the embeddings are tied.
func (m *Model) specs() []tensorSpec {
	c := m.cfg
	C, F, V, D := c.HiddenSize, c.IntermediateSize, c.VocabSize, c.HeadDim
	Q, KV := c.QDim(), c.KVDim()
	s := []tensorSpec{{"model.embed_tokens.weight", []int{V, C}, &m.embed}}
	for l := range m.layers {
		w := &m.layers[l]
		p := fmt.Sprintf("model.layers.%d.", l)
		s = append(s,
			tensorSpec{p + "input_layernorm.weight", []int{C}, &w.attnNorm},
			tensorSpec{p + "self_attn.q_proj.weight", []int{Q, C}, &w.wq},
			tensorSpec{p + "self_attn.k_proj.weight", []int{KV, C}, &w.wk},
			tensorSpec{p + "self_attn.v_proj.weight", []int{KV, C}, &w.wv},
			tensorSpec{p + "self_attn.o_proj.weight", []int{C, Q}, &w.wo},
			tensorSpec{p + "post_attention_layernorm.weight", []int{C}, &w.mlpNorm},
			tensorSpec{p + "mlp.gate_proj.weight", []int{F, C}, &w.wGate},
			tensorSpec{p + "mlp.up_proj.weight", []int{F, C}, &w.wUp},
			tensorSpec{p + "mlp.down_proj.weight", []int{C, F}, &w.wDown},
		)
		if c.QKVBias() {
			s = append(s,
				tensorSpec{p + "self_attn.q_proj.bias", []int{Q}, &w.bq},
				tensorSpec{p + "self_attn.k_proj.bias", []int{KV}, &w.bk},
				tensorSpec{p + "self_attn.v_proj.bias", []int{KV}, &w.bv},
			)
		}
		if c.OBias() {
			s = append(s, tensorSpec{p + "self_attn.o_proj.bias", []int{C}, &w.bo})
		}
		if c.QKNorm() {
			s = append(s,
				tensorSpec{p + "self_attn.q_norm.weight", []int{D}, &w.qNorm},
				tensorSpec{p + "self_attn.k_norm.weight", []int{D}, &w.kNorm},
			)
		}
		if c.MLPBias {
			s = append(s,
				tensorSpec{p + "mlp.gate_proj.bias", []int{F}, &w.bGate},
				tensorSpec{p + "mlp.up_proj.bias", []int{F}, &w.bUp},
				tensorSpec{p + "mlp.down_proj.bias", []int{C}, &w.bDown},
			)
		}
	}
	s = append(s, tensorSpec{"model.norm.weight", []int{C}, &m.norm})
	if !c.TieWordEmbeddings {
		s = append(s, tensorSpec{"lm_head.weight", []int{V, C}, &m.lmHead})
	}
	return s
}

// LoadOptions are the choices of LoadWith. The zero value is what Load does.
type LoadOptions struct {
	// KeepBF16 keeps the matrices that the checkpoint stores as BF16 (every Linear weight,
	// embed_tokens, lm_head) in BF16 on the backend, half the memory of float32, when the
	// backend implements backend.WeightStore; otherwise it has no effect. Vectors (norms,
	// biases) and F32/F16 tensors are still converted to float32. The forward's results are
	// bitwise those of Load: the backend widens BF16 exactly and computes in float32.
	//
	// BF16 weights are frozen: use KeepBF16 for inference and LoRA training, not for full
	// fine-tuning (which writes the weights) nor with AddToWeight (merging an adapter).
	KeepBF16 bool

	// ToBF16 also stores the matrices that the checkpoint holds as F32 or F16 as BF16, rounded
	// to nearest even: half the memory of float32 at the cost of BF16 rounding of the frozen
	// weights (an accuracy change, unlike KeepBF16). It implies KeepBF16.
	ToBF16 bool

	// Quantize, when set, keeps every block Linear weight quantized in this format on a backend
	// that implements backend.PackedStore (QLoRA; see quant.go); on another backend the weights
	// get the quantization's values in float32. The weights are frozen.
	Quantize *quant.Options
	// QuantizeFunc, with Quantize, replaces quant.Quantize for each Linear weight (LoftQ).
	QuantizeFunc QuantizeFunc
}

// Load reads dir/config.json and the safetensors weights in dir (one file or an index with
// shards), converts them to float32 (F32, BF16 and F16 are accepted) and uploads them to b.
// Every tensor's shape is checked against the config; all missing tensors are reported in one
// error. Tensors the model does not use (e.g. rotary_emb.inv_freq) are ignored.
func Load(dir string, b backend.Backend) (*Model, error) {
	return LoadWith(dir, b, LoadOptions{})
}

// LoadWith is Load with options (see LoadOptions).
func LoadWith(dir string, b backend.Backend, opt LoadOptions) (*Model, error) {
	cfg, err := LoadConfig(dir)
	if err != nil {
		return nil, err
	}
	ck, err := safetensors.OpenCheckpoint(dir)
	if err != nil {
		return nil, fmt.Errorf("load %s model weights: %w", cfg.ModelType, err)
	}
	defer ck.Close()
	m, err := newModel(cfg, b)
	if err != nil {
		return nil, err
	}
	if err := m.loadWeights(ck, dir, opt); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

// loadWeights checks every expected tensor of ck, then converts and uploads them.
func (m *Model) loadWeights(ck *safetensors.Checkpoint, dir string, opt LoadOptions) error {
	specs := m.specs()
	where := dir
	if files := ck.Files(); len(files) == 1 {
		where = files[0]
	}
	qi, err := quant.ReadInfo(ck) // nil unless written by loractl quantize
	if err != nil {
		return err
	}
	if err := checkQuantConfig(m.cfg.Path, where, qi); err != nil {
		return err
	}
	if opt.Quantize != nil {
		if err := opt.Quantize.Validate(); err != nil {
			return err
		}
	}

	// Presence first, so that one error lists everything that is missing.
	var missing []string
	for _, s := range specs {
		if _, ok := ck.Info(s.name); !ok {
			missing = append(missing, s.name)
		}
	}
	if len(missing) > 0 {
		const show = 10
		list := strings.Join(missing[:min(show, len(missing))], ", ")
		if len(missing) > show {
			list += fmt.Sprintf(", ... (%d more)", len(missing)-show)
		}
		hint := "the checkpoint does not match config.json (model_type " + m.cfg.ModelType + ")"
		if !m.cfg.TieWordEmbeddings && slices.Contains(missing, "lm_head.weight") && len(missing) == 1 {
			hint = "config.json says tie_word_embeddings=false; set it to true if lm_head shares embed_tokens"
		}
		return fmt.Errorf("%s: %d of %d tensors missing: %s; %s", where, len(missing), len(specs), list, hint)
	}

	// Shapes and dtypes.
	var bad []string
	for _, s := range specs {
		info, _ := ck.Info(s.name)
		if qs, ok := quantShape(qi, s.name); ok { // packed codes; the parts are checked on read
			if !slices.Equal(qs, s.shape) {
				bad = append(bad, fmt.Sprintf("%s has shape %v, want %v", s.name, qs, s.shape))
			}
			continue
		}
		if !slices.Equal(info.Shape, s.shape) {
			bad = append(bad, fmt.Sprintf("%s has shape %v, want %v", s.name, info.Shape, s.shape))
			continue
		}
		switch info.DType {
		case safetensors.F32, safetensors.BF16, safetensors.F16:
		default:
			bad = append(bad, fmt.Sprintf("%s has dtype %s, want F32, BF16 or F16", s.name, info.DType))
		}
	}
	if len(bad) > 0 {
		more := ""
		if len(bad) > 5 {
			more = fmt.Sprintf("; ... (%d more)", len(bad)-5)
			bad = bad[:5]
		}
		return fmt.Errorf("%s: tensors do not match config.json (%s): %s%s; check that config.json belongs to these weights",
			where, m.cfg.Path, strings.Join(bad, "; "), more)
	}

	// Convert and upload.
	ws, _ := m.be.(backend.WeightStore)
	for _, s := range specs {
		if buf, ok, err := m.loadQuantized(ck, qi, s, opt, where); ok {
			if err != nil {
				return err
			}
			*s.dst = buf
			continue
		}
		info, _ := ck.Info(s.name)
		matrix := ws != nil && len(s.shape) == 2
		if matrix && (opt.KeepBF16 || opt.ToBF16) && info.DType == safetensors.BF16 {
			buf, err := uploadBF16(ck, s.name, ws)
			if err != nil {
				return fmt.Errorf("%s: %w", where, err)
			}
			*s.dst = buf
			continue
		}
		vals, err := ck.Float32(s.name) // (numel,)
		if err != nil {
			return fmt.Errorf("%s: read %s: %w", where, s.name, err)
		}
		if matrix && opt.ToBF16 {
			bits := make([]uint16, len(vals)) // (numel,) rounded to nearest even
			for i, v := range vals {
				bits[i] = safetensors.Float32ToBF16(v)
			}
			buf := ws.AllocWeight(len(bits), backend.BF16)
			if err := ws.UploadBF16(buf, bits); err != nil {
				return fmt.Errorf("upload %s to %s: %w", s.name, m.be.Name(), err)
			}
			*s.dst = buf
			continue
		}
		buf := m.be.Alloc(len(vals))
		if err := m.be.Upload(buf, vals); err != nil {
			return fmt.Errorf("upload %s to %s: %w", s.name, m.be.Name(), err)
		}
		*s.dst = buf
	}
	if m.cfg.TieWordEmbeddings {
		m.lmHead = m.embed
	}
	return nil
}

// uploadBF16 copies the raw bfloat16 bits of tensor name from the checkpoint into a new BF16
// buffer of ws.
func uploadBF16(ck *safetensors.Checkpoint, name string, ws backend.WeightStore) (backend.Buffer, error) {
	raw, err := ck.Bytes(name) // little-endian bfloat16, a view of the mapped file
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	bits := make([]uint16, len(raw)/2) // (numel,)
	for i := range bits {
		bits[i] = binary.LittleEndian.Uint16(raw[2*i:])
	}
	buf := ws.AllocWeight(len(bits), backend.BF16)
	if err := ws.UploadBF16(buf, bits); err != nil {
		return nil, fmt.Errorf("upload %s: %w", name, err)
	}
	return buf, nil
}
