package model

import (
	"fmt"
	"slices"

	"github.com/loractl/loractl/internal/backend"
)

// WeightShape returns the shape of the checkpoint tensor name ("model.layers.0.self_attn.q_proj.weight")
// as this model holds it, and whether the model has such a tensor.
func (m *Model) WeightShape(name string) ([]int, bool) {
	for _, s := range m.specs() {
		if s.name == name {
			return slices.Clone(s.shape), true
		}
	}
	return nil, false
}

// AddToWeight adds delta, laid out like the tensor (row-major, e.g. (out, in) for a Linear
// weight), to the frozen weight called name. Merging a LoRA adapter for inference uses it:
// W += s·B·A. A weight kept in BF16 (LoadOptions.KeepBF16) is an error: rounding the sum back to
// bfloat16 would lose most of a small delta, so a model to merge into is loaded without
// KeepBF16.
func (m *Model) AddToWeight(name string, delta []float32) error {
	for _, s := range m.specs() {
		if s.name != name {
			continue
		}
		buf := *s.dst
		if dt := m.dtypeOf(buf); dt != backend.F32 {
			return fmt.Errorf("model: cannot add to %s: it is kept as %s on %s (frozen); load the model without KeepBF16 to merge an adapter", name, dt, m.be.Name())
		}
		if len(delta) != buf.Len() {
			return fmt.Errorf("model: delta for %s has %d elements, the weight %v has %d", name, len(delta), s.shape, buf.Len())
		}
		w := make([]float32, buf.Len()) // same shape as the weight
		if err := m.be.Download(w, buf); err != nil {
			return err
		}
		for i, d := range delta {
			w[i] += d
		}
		return m.be.Upload(buf, w)
	}
	return fmt.Errorf("model: no weight %q in this %s model", name, m.cfg.ModelType)
}

// Tensor returns the backend buffer that holds the checkpoint tensor name, with its shape. The
// buffer belongs to the model: callers may read it (Download gives float32 values, also for a
// BF16 weight), and the trainer updates it in place for full fine-tuning (F32 weights only), but
// must not free it. When the embeddings are tied, "lm_head.weight" is not a
// tensor of its own; ask for "model.embed_tokens.weight".
func (m *Model) Tensor(name string) (backend.Buffer, []int, bool) {
	for _, s := range m.specs() {
		if s.name == name {
			return *s.dst, slices.Clone(s.shape), true
		}
	}
	return nil, nil, false
}

// WeightDType returns how the backend stores tensor name: backend.BF16 for a matrix kept in
// bfloat16 (LoadOptions.KeepBF16), else backend.F32; false if the model has no such tensor.
// Download of the buffer from Tensor gives float32 values either way.
func (m *Model) WeightDType(name string) (backend.DType, bool) {
	for _, s := range m.specs() {
		if s.name == name {
			return m.dtypeOf(*s.dst), true
		}
	}
	return 0, false
}

// dtypeOf reports how the backend stores b (F32 unless the backend keeps narrower weights).
func (m *Model) dtypeOf(b backend.Buffer) backend.DType {
	if ws, ok := m.be.(backend.WeightStore); ok && b != nil {
		return ws.DTypeOf(b)
	}
	return backend.F32
}

// TensorNames lists the model's tensors in checkpoint naming and load order.
func (m *Model) TensorNames() []string {
	specs := m.specs()
	names := make([]string, len(specs))
	for i, s := range specs {
		names[i] = s.name
	}
	return names
}
