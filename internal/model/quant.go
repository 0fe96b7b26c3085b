package model

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"

	"github.com/loractl/loractl/internal/backend"
	"github.com/loractl/loractl/internal/quant"
	"github.com/loractl/loractl/internal/safetensors"
)

// Quantized checkpoints and quantized bases.
//
// A folder written by `loractl quantize` (internal/quant, docs/FORMATS.md) holds the block
// Linear weights as packed codes plus scales, described by the safetensors metadata entry
// quant.MetadataKey. Load recognises it and dequantizes those weights to float32, so every
// consumer (generate, eval, merge) sees an ordinary model. With LoadOptions.Quantize the Linear
// weights are instead kept quantized on a backend that implements backend.PackedStore and
// expanded right before each product (QLoRA): from a float checkpoint they are quantized while
// loading, and a quantized checkpoint in the same format is uploaded as it is.

// checkQuantConfig compares config.json's quantization_config with what the weights hold (qi,
// nil for none): a checkpoint quantized by another tool (bitsandbytes, GPTQ, AWQ, ...) cannot be
// read, and a loractl quantization_config without the weights' metadata is a broken folder.
func checkQuantConfig(cfgPath, where string, qi *quant.Info) error {
	raw, err := os.ReadFile(cfgPath)
	if err != nil {
		return nil // LoadConfig read it a moment ago; nothing more to say here
	}
	var c struct {
		QC *struct {
			Method string `json:"quant_method"`
		} `json:"quantization_config"`
	}
	if json.Unmarshal(raw, &c) != nil || c.QC == nil {
		return nil
	}
	switch {
	case c.QC.Method != quant.QuantMethod:
		return fmt.Errorf("%s: the checkpoint is quantized with %q (quantization_config in %s), which loractl cannot read; use the original float checkpoint (and loractl quantize, or model.quantize for QLoRA)", where, c.QC.Method, cfgPath)
	case qi == nil:
		return fmt.Errorf("%s: config.json (%s) says the weights are quantized by loractl, but the safetensors file has no %s metadata; re-create the folder with loractl quantize", where, cfgPath, quant.MetadataKey)
	}
	return nil
}

// QuantizeFunc quantizes one Linear weight while loading (LoadOptions.QuantizeFunc).
type QuantizeFunc func(name string, w []float32, shape []int) (*quant.Tensor, error)

// quantSpec returns the shape a quantized checkpoint records for tensor name, if it is
// quantized there.
func quantShape(qi *quant.Info, name string) ([]int, bool) {
	if qi == nil {
		return nil, false
	}
	s, ok := qi.Shapes[name]
	return s, ok
}

// loadQuantized loads tensor s when it is quantized in the checkpoint or is to be quantized
// (opt.Quantize). ok is false for the tensors it leaves to the ordinary path.
func (m *Model) loadQuantized(ck *safetensors.Checkpoint, qi *quant.Info, s tensorSpec, opt LoadOptions, where string) (buf backend.Buffer, ok bool, err error) {
	_, stored := quantShape(qi, s.name)
	want := opt.Quantize != nil && quant.IsLinearWeight(s.name)
	if !stored && !want {
		return nil, false, nil
	}
	var t *quant.Tensor
	var vals []float32 // (numel,) float32 values, when the weight is not uploaded packed
	if stored {
		if t, err = quant.ReadTensor(ck, qi, s.name); err != nil {
			return nil, true, err
		}
		if want && (opt.QuantizeFunc != nil || qi.Options() != *opt.Quantize) {
			// Another format (or LoftQ) was asked for: start again from the dequantized values.
			vals, t = t.Dequantize(), nil
		}
	} else if vals, err = ck.Float32(s.name); err != nil {
		return nil, true, fmt.Errorf("%s: read %s: %w", where, s.name, err)
	}
	if want && t == nil {
		qf := opt.QuantizeFunc
		if qf == nil {
			qo := *opt.Quantize
			qf = func(name string, w []float32, shape []int) (*quant.Tensor, error) {
				return quant.Quantize(name, w, shape, qo)
			}
		}
		if t, err = qf(s.name, vals, slices.Clone(s.shape)); err != nil {
			return nil, true, fmt.Errorf("%s: %w", where, err)
		}
	}
	ps, packed := m.be.(backend.PackedStore)
	if want && packed {
		buf, err = ps.UploadPacked(t)
		if err != nil {
			return nil, true, fmt.Errorf("upload %s to %s: %w", s.name, m.be.Name(), err)
		}
		return buf, true, nil
	}
	// Dequantize on load: a quantized checkpoint read as float32, or a quantized base on a
	// backend that cannot keep packed weights (same values, float32 memory).
	if t != nil {
		vals = t.Dequantize()
	}
	buf = m.be.Alloc(len(vals))
	if err := m.be.Upload(buf, vals); err != nil {
		return nil, true, fmt.Errorf("upload %s to %s: %w", s.name, m.be.Name(), err)
	}
	return buf, true, nil
}

// WeightMemory is how much memory a model's weights take on its backend.
type WeightMemory struct {
	Bytes          int64 // every tensor as stored (float32, bfloat16 or packed)
	Params         int64 // elements
	QuantizedBytes int64 // the packed (quantized) tensors
	QuantizedElems int64
}

// QuantizedBitsPerParam is the storage of the packed tensors in bits per element (0 if none).
func (w WeightMemory) QuantizedBitsPerParam() float64 {
	if w.QuantizedElems == 0 {
		return 0
	}
	return 8 * float64(w.QuantizedBytes) / float64(w.QuantizedElems)
}

// BitsPerParam is the storage of all weights in bits per element.
func (w WeightMemory) BitsPerParam() float64 { return 8 * float64(w.Bytes) / float64(max(w.Params, 1)) }

// WeightMemory returns the memory of the model's weights as its backend stores them.
func (m *Model) WeightMemory() WeightMemory {
	var w WeightMemory
	ps, _ := m.be.(backend.PackedStore)
	for _, s := range m.specs() {
		b := *s.dst
		if b == nil {
			continue
		}
		n := int64(b.Len())
		w.Params += n
		switch m.dtypeOf(b) {
		case backend.Quantized:
			pb := ps.PackedBytes(b)
			w.Bytes += pb
			w.QuantizedBytes += pb
			w.QuantizedElems += n
		case backend.BF16:
			w.Bytes += 2 * n
		default:
			w.Bytes += 4 * n
		}
	}
	return w
}
