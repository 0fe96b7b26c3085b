// Package engine runs a Llama-family model forward and backward on a training backend: the
// model-level backward pass of LoRA and full fine-tuning, in the style of llm.c's
// gpt2_forward/gpt2_backward.
//
// The engine composes the ops of backend.Trainer. Forward keeps, per decoder block, every
// activation that backward reads (llm.c's ActivationTensors); with gradient checkpointing it
// keeps only each block's input and recomputes the block inside backward. Every backward op
// adds into its gradient outputs, so the residual stream and a LoRA-adapted Linear's input
// collect their gradients without temporaries.
//
// An adapted Linear computes y = W0·x + b + s·B·(A·drop(x)), W0 (out, in) frozen, A (r, in),
// B (out, r), s = alpha/r (alpha/√r with rsLoRA):
//
//	forward:   u (N, r) = drop(x)·Aᵀ,        y += s·u·Bᵀ
//	backward:  dB += s·dyᵀ·u,  du = s·dy·B,  dA += duᵀ·drop(x),  dx += dy·W0 + mask⊙(du·A)
//
// Dropout is inverted dropout as in PyTorch (kept values scaled by 1/(1−p)). Its masks come
// from a seeded PCG stream keyed by (call counter, layer, module), so a recomputed block sees
// the same masks and a resumed run continues the same streams. The masks are applied on the
// host (Download, multiply, Upload), because the backend has no elementwise product yet.
//
// Everything is deterministic: the same batch, parameters and RNG state give bitwise-identical
// losses and gradients.
package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"

	"github.com/loractl/loractl/internal/backend"
	"github.com/loractl/loractl/internal/lora"
	"github.com/loractl/loractl/internal/model"
	"github.com/loractl/loractl/internal/optim"
)

// Training methods.
const (
	MethodLoRA = "lora" // frozen base, trainable LoRA A/B
	MethodFull = "full" // every model tensor is trainable
)

// Options configures an Engine.
type Options struct {
	Method            string  // "lora" or "full"
	Dropout           float64 // LoRA dropout on the adapter input (training only); ignored by "full"
	Seed              uint64  // dropout RNG seed
	GradCheckpointing bool    // keep only each block's input; recompute the block in backward
	// FreezeA keeps every LoRA A at its initial value (LoRA-FA): A gets no gradient and is not a
	// parameter, and a Linear input that only dA would read is not kept for backward.
	FreezeA bool
	// Composer, when set, owns the trainable parameters: the adapter's A and B are effective
	// factors it composes from them on the host (LoRA variants, package variant). Params
	// returns its parameters, SyncParams composes and uploads, SyncGrads downloads dA', dB'
	// and hands them to its Backward.
	Composer Composer
}

// Composer is a LoRA variant whose parameters map to the adapter's effective factors.
type Composer interface {
	Params() []optim.Param             // the trained parameters, with their gradients
	Compose()                          // parameters → the adapter's A and B
	Backward(dA, dB [][]float32) error // ∂L/∂A', ∂L/∂B' per pair → parameter gradients (adds)
}

// Batch is one micro-batch of B rows of T tokens. Every slice is (B·T) row-major.
type Batch struct {
	Tokens    []int // (B·T) input ids
	Targets   []int // (B·T) next-token ids; backend.IgnoreIndex (-100) takes no part in the loss
	Positions []int // (B·T) RoPE positions (restarting at 0 for each packed sample); nil: 0..T-1 per row
	Segments  []int // (B·T) sample ids for packing; nil: one sample per row
	B, T      int
}

// linear is one Linear layer of a block as the engine runs it: the base weight and bias, their
// gradients (full method only) and the LoRA pair attached to it (nil when not adapted).
type linear struct {
	idx     int            // position in lora.LinearNames (the dropout stream)
	in, out int            // features
	w       backend.Buffer // (out, in)
	b       backend.Buffer // (out) or nil
	dw, db  backend.Buffer // (out, in), (out): gradients, nil when frozen or absent
	lora    *loraLinear    // nil when not adapted
}

// loraLinear is the device side of one LoRA pair.
type loraLinear struct {
	a, b   backend.Buffer // (r, in), (out, r)
	da, db backend.Buffer // (r, in), (out, r) gradients; da is nil when A is frozen (LoRA-FA)
	r      int            // rank (lora_A rows)
	s      float32        // scale of the active rank (alpha/r, alpha/√r with rsLoRA)
	pair   *lora.Pair     // the host values
	dora   *doraLinear    // DoRA's magnitude and norms, nil for LoRA
}

// block holds one decoder block's weights (and, for full fine-tuning, gradients).
type block struct {
	attnNorm, mlpNorm   backend.Buffer // (C)
	qNorm, kNorm        backend.Buffer // (D) or nil (qwen3 only)
	dAttnNorm, dMLPNorm backend.Buffer // (C) or nil
	dQNorm, dKNorm      backend.Buffer // (D) or nil
	lin                 [7]linear      // q, k, v, o, gate, up, down (lora.LinearNames order)
}

// The indices of block.lin.
const (
	linQ = iota
	linK
	linV
	linO
	linGate
	linUp
	linDown
)

// param is one trainable tensor: its host copy for the optimizer and its device buffers.
type param struct {
	host optim.Param
	buf  backend.Buffer // device values (the model's own buffer for full fine-tuning)
	grad backend.Buffer // device gradient, same length
}

// Engine runs forward and backward passes of one model, with either a LoRA adapter or full
// fine-tuning. It is not safe for concurrent use.
type Engine struct {
	m   *model.Model
	cfg *model.Config
	be  backend.Trainer
	fa  backend.FlashAttention // the backend's tiled attention when it takes the head dim, else nil
	opt Options
	ad  *lora.Adapter // nil for "full"
	// limit is DyLoRA's active rank: only the leading limit ranks of each pair take part (the
	// device copies of A and B are zero beyond them) at the scale of rank limit; 0: all.
	limit int
	lls   []*loraLinear // the adapted Linears, in adapter order
	// With a Composer: host copies of every pair's dA' (r, in) and dB' (out, r), in order.
	effDA, effDB [][]float32

	embed, norm, lmHead backend.Buffer // (V, C), (C), (V, C) (lmHead = embed when tied)
	dEmbed, dNorm, dLM  backend.Buffer // gradients or nil (dLM = dEmbed when tied)
	invFreq             backend.Buffer // (D/2)
	blocks              []block        // (L,)
	params              []param
	owned               []backend.Buffer // buffers the engine allocated (freed by Close)

	calls uint64   // ForwardBackward calls so far: the dropout stream counter
	pcg   rand.PCG // dropout generator, reseeded per (call, layer, module) by fillMask
	act   *acts    // activation and scratch buffers for the current (B, T), nil before the first call
}

// New prepares model m for training with adapter a (method "lora") or with every tensor
// trainable (method "full", a nil). m's backend must implement backend.Trainer. For "lora" the
// adapter's A and B are the host parameters: the optimizer updates them in place and
// SyncParams uploads them.
func New(m *model.Model, a *lora.Adapter, opt Options) (*Engine, error) {
	if m == nil {
		return nil, errors.New("engine: no model")
	}
	tr, ok := m.Backend().(backend.Trainer)
	if !ok {
		return nil, fmt.Errorf("engine: the %s backend cannot train (it does not implement backend.Trainer); use the cpu backend", m.Backend().Name())
	}
	if opt.Method == "" {
		opt.Method = MethodLoRA
	}
	cfg := m.Config()
	e := &Engine{m: m, cfg: cfg, be: tr, opt: opt, blocks: make([]block, cfg.NumHiddenLayers)}
	if fa, ok := tr.(backend.FlashAttention); ok && fa.FlashAttentionFits(cfg.HeadDim) {
		e.fa = fa // attention keeps the logsumexp (B, NH, T), not the probabilities (B, NH, T, T)
	}
	switch opt.Method {
	case MethodLoRA:
		if a == nil || len(a.Pairs) == 0 {
			return nil, errors.New("engine: method lora needs an adapter with at least one module")
		}
		if opt.Dropout < 0 || opt.Dropout >= 1 {
			return nil, fmt.Errorf("engine: lora dropout %g is outside [0, 1)", opt.Dropout)
		}
		if err := a.CheckBase(cfg, "adapter"); err != nil {
			return nil, err
		}
	case MethodFull:
		if a != nil {
			return nil, errors.New("engine: method full trains every weight; it takes no adapter")
		}
		e.opt.Dropout = 0
	default:
		return nil, fmt.Errorf("engine: unknown method %q (want lora or full)", opt.Method)
	}

	// RoPE table, in the same float32 rounding as the model's.
	inv := cfg.RoPEInvFreq() // (D/2)
	e.invFreq = e.alloc(len(inv))
	if err := tr.Upload(e.invFreq, inv); err != nil {
		e.Close()
		return nil, fmt.Errorf("engine: upload RoPE frequencies: %w", err)
	}
	if err := e.bindWeights(); err != nil {
		e.Close()
		return nil, err
	}
	var err error
	if opt.Method == MethodFull {
		err = e.setupFull()
	} else {
		err = e.setupLoRA(a)
	}
	if err != nil {
		e.Close()
		return nil, err
	}
	return e, nil
}

// alloc allocates a zeroed device buffer that Close frees.
func (e *Engine) alloc(n int) backend.Buffer {
	b := e.be.Alloc(n)
	e.owned = append(e.owned, b)
	return b
}

// tensor fetches a model tensor by checkpoint name; optional tensors may be missing.
func (e *Engine) tensor(name string, optional bool) (backend.Buffer, error) {
	b, _, ok := e.m.Tensor(name)
	if !ok && !optional {
		return nil, fmt.Errorf("engine: the model has no tensor %s", name)
	}
	return b, nil
}

// bindWeights looks up every weight buffer of the model.
func (e *Engine) bindWeights() error {
	cfg := e.cfg
	var err error
	get := func(name string, optional bool) backend.Buffer {
		if err != nil {
			return nil
		}
		var b backend.Buffer
		b, err = e.tensor(name, optional)
		return b
	}
	e.embed = get("model.embed_tokens.weight", false)
	e.norm = get("model.norm.weight", false)
	if cfg.TieWordEmbeddings {
		e.lmHead = e.embed
	} else {
		e.lmHead = get("lm_head.weight", false)
	}
	C, F, Q, KV := cfg.HiddenSize, cfg.IntermediateSize, cfg.QDim(), cfg.KVDim()
	dims := [7][2]int{{C, Q}, {C, KV}, {C, KV}, {Q, C}, {C, F}, {C, F}, {F, C}} // (in, out)
	for l := range e.blocks {
		bl := &e.blocks[l]
		p := fmt.Sprintf("model.layers.%d.", l)
		bl.attnNorm = get(p+"input_layernorm.weight", false)
		bl.mlpNorm = get(p+"post_attention_layernorm.weight", false)
		if cfg.QKNorm() {
			bl.qNorm = get(p+"self_attn.q_norm.weight", false)
			bl.kNorm = get(p+"self_attn.k_norm.weight", false)
		}
		for i, n := range lora.LinearNames {
			path := p + modulePart(n) + "." + n
			bl.lin[i] = linear{idx: i, in: dims[i][0], out: dims[i][1],
				w: get(path+".weight", false), b: get(path+".bias", true)}
		}
	}
	return err
}

// modulePart returns "mlp" for the MLP Linears and "self_attn" for the attention ones.
func modulePart(name string) string {
	if name == "gate_proj" || name == "up_proj" || name == "down_proj" {
		return "mlp"
	}
	return "self_attn"
}

// setupFull makes every model tensor a parameter: host copy, device gradient, and the
// gradient pointers of the blocks.
func (e *Engine) setupFull() error {
	grads := map[string]backend.Buffer{}
	for _, name := range e.m.TensorNames() {
		buf, _, _ := e.m.Tensor(name)
		data := make([]float32, buf.Len()) // the tensor's shape, row-major
		if err := e.be.Download(data, buf); err != nil {
			return fmt.Errorf("engine: download %s: %w", name, err)
		}
		g := e.alloc(buf.Len())
		grads[name] = g
		e.params = append(e.params, param{
			host: optim.Param{Name: name, Data: data, Grad: make([]float32, len(data))}, buf: buf, grad: g,
		})
	}
	e.dEmbed = grads["model.embed_tokens.weight"]
	e.dNorm = grads["model.norm.weight"]
	if e.cfg.TieWordEmbeddings {
		e.dLM = e.dEmbed // lm_head and the embedding share one tensor: both gradients add into it
	} else {
		e.dLM = grads["lm_head.weight"]
	}
	for l := range e.blocks {
		bl := &e.blocks[l]
		p := fmt.Sprintf("model.layers.%d.", l)
		bl.dAttnNorm = grads[p+"input_layernorm.weight"]
		bl.dMLPNorm = grads[p+"post_attention_layernorm.weight"]
		bl.dQNorm = grads[p+"self_attn.q_norm.weight"] // nil unless qwen3
		bl.dKNorm = grads[p+"self_attn.k_norm.weight"]
		for i, n := range lora.LinearNames {
			path := p + modulePart(n) + "." + n
			bl.lin[i].dw = grads[path+".weight"]
			bl.lin[i].db = grads[path+".bias"] // nil when there is no bias
		}
	}
	return nil
}

// setupLoRA uploads the adapter's A and B and attaches them to their Linears.
func (e *Engine) setupLoRA(a *lora.Adapter) error {
	e.ad = a
	if e.opt.Composer != nil && e.opt.FreezeA {
		return errors.New("engine: a composed variant trains its own parameters; it takes no FreezeA")
	}
	for _, p := range a.Pairs {
		md := p.Module
		if md.Layer < 0 || md.Layer >= len(e.blocks) {
			return fmt.Errorf("engine: adapter module %s is outside the model's %d layers", md.Path, len(e.blocks))
		}
		i := slices.Index(lora.LinearNames, md.Name)
		if i < 0 {
			return fmt.Errorf("engine: adapter module %s is not a Linear of a block", md.Path)
		}
		lin := &e.blocks[md.Layer].lin[i]
		if lin.lora != nil {
			return fmt.Errorf("engine: the adapter adapts %s twice", md.Path)
		}
		r := a.RankOf(p)
		if len(p.A) != r*lin.in || len(p.B) != lin.out*r {
			return fmt.Errorf("engine: adapter %s has A of %d and B of %d values; r=%d and the module (%d×%d) need %d and %d",
				md.Path, len(p.A), len(p.B), r, lin.out, lin.in, r*lin.in, lin.out*r)
		}
		ll := &loraLinear{a: e.alloc(r * lin.in), b: e.alloc(lin.out * r), db: e.alloc(lin.out * r),
			r: r, s: a.ScaleOf(p), pair: p}
		if !e.opt.FreezeA {
			ll.da = e.alloc(r * lin.in)
		}
		lin.lora = ll
		e.lls = append(e.lls, ll)
		if p.M != nil {
			if err := e.setupDoRA(lin, ll); err != nil {
				return err
			}
		}
		if e.opt.Composer != nil {
			e.effDA, e.effDB = append(e.effDA, make([]float32, len(p.A))), append(e.effDB, make([]float32, len(p.B)))
			continue // uploaded by SyncParams below; the composer's parameters are the params
		}
		for _, t := range []struct {
			suffix    string
			data      []float32
			buf, grad backend.Buffer
		}{{"lora_A.weight", p.A, ll.a, ll.da}, {"lora_B.weight", p.B, ll.b, ll.db}} {
			if err := e.be.Upload(t.buf, t.data); err != nil {
				return fmt.Errorf("engine: upload %s.%s: %w", md.Path, t.suffix, err)
			}
			if t.grad == nil {
				continue // frozen A: uploaded once, never a parameter
			}
			e.params = append(e.params, param{
				host: optim.Param{Name: md.Path + "." + t.suffix, Data: t.data, Grad: make([]float32, len(t.data))},
				buf:  t.buf, grad: t.grad,
			})
		}
	}
	if c := e.opt.Composer; c != nil {
		for _, p := range c.Params() {
			e.params = append(e.params, param{host: p}) // host only: no device copy
		}
		return e.SyncParams()
	}
	for _, ll := range e.lls {
		if ll.dora != nil {
			e.params = append(e.params, param{host: ll.dora.m}) // host only: the magnitude
		}
	}
	return e.doraNorms()
}

// SetRankLimit makes only the leading k ranks of every pair take part in the following passes,
// at the scale of rank k (DyLoRA's truncation b; pairs of rank ≤ k are whole); 0 restores every
// rank. The host parameters keep all their values: the device copies of A and B are zero
// beyond rank k, so the gradients there are exactly zero. Call it after SyncParams.
func (e *Engine) SetRankLimit(k int) error {
	if e.ad == nil {
		return errors.New("engine: a rank limit needs a LoRA adapter")
	}
	if k < 0 {
		return fmt.Errorf("engine: rank limit %d is negative", k)
	}
	e.limit = k
	return e.uploadLimited()
}

// uploadLimited uploads every pair's A and B with the ranks beyond e.limit zeroed, and sets
// each pair's scale for its active rank.
func (e *Engine) uploadLimited() error {
	var tmp []float32
	for _, ll := range e.lls {
		p := ll.pair
		k := ll.r
		if e.limit > 0 {
			k = min(k, e.limit)
		}
		ll.s = e.ad.Config.ScaleAt(e.ad.AlphaOf(p), k)
		in, out := p.Module.In, p.Module.Out
		tmp = slices.Grow(tmp[:0], max(len(p.A), len(p.B)))[:len(p.A)]
		copy(tmp, p.A)
		clear(tmp[k*in:]) // (r, in): rows ≥ k
		if err := e.be.Upload(ll.a, tmp); err != nil {
			return fmt.Errorf("engine: upload %s.lora_A.weight: %w", p.Module.Path, err)
		}
		tmp = tmp[:len(p.B)]
		copy(tmp, p.B)
		for o := 0; o < out; o++ {
			clear(tmp[o*ll.r+k : (o+1)*ll.r]) // (out, r): columns ≥ k
		}
		if err := e.be.Upload(ll.b, tmp); err != nil {
			return fmt.Errorf("engine: upload %s.lora_B.weight: %w", p.Module.Path, err)
		}
	}
	return nil
}

// Params returns the trainable tensors with their host values and gradients, in a stable
// order: for LoRA, lora_A then lora_B of each adapter pair in the adapter's order, named as
// PEFT's tensors without the "base_model.model." prefix; for full fine-tuning, every model
// tensor in checkpoint order and naming. The slices stay valid for the engine's lifetime.
func (e *Engine) Params() []optim.Param {
	out := make([]optim.Param, len(e.params))
	for i := range e.params {
		out[i] = e.params[i].host
	}
	return out
}

// ZeroGrads zeroes the device gradients and their host copies.
func (e *Engine) ZeroGrads() {
	for _, p := range e.params {
		if p.grad != nil {
			e.be.Zero(p.grad, p.grad.Len())
		}
		clear(p.host.Grad)
	}
	e.doraZero()
	if e.opt.Composer != nil {
		for _, ll := range e.lls {
			e.be.Zero(ll.da, ll.da.Len())
			e.be.Zero(ll.db, ll.db.Len())
		}
	}
}

// SyncGrads copies the device gradients into Params()[i].Grad; with a Composer it downloads
// dA', dB' and back-propagates them into the composer's parameters.
func (e *Engine) SyncGrads() error {
	if c := e.opt.Composer; c != nil {
		for i, ll := range e.lls {
			if err := e.be.Download(e.effDA[i], ll.da); err != nil {
				return fmt.Errorf("engine: download the gradient of %s.lora_A: %w", ll.pair.Module.Path, err)
			}
			if err := e.be.Download(e.effDB[i], ll.db); err != nil {
				return fmt.Errorf("engine: download the gradient of %s.lora_B: %w", ll.pair.Module.Path, err)
			}
		}
		return c.Backward(e.effDA, e.effDB)
	}
	for _, p := range e.params {
		if p.grad == nil {
			continue // a host-only parameter (DoRA's magnitude): doraGrads sets it
		}
		if err := e.be.Download(p.host.Grad, p.grad); err != nil {
			return fmt.Errorf("engine: download the gradient of %s: %w", p.host.Name, err)
		}
	}
	return e.doraGrads()
}

// SyncParams uploads Params()[i].Data to the device, after an optimizer step. For full
// fine-tuning this updates the model's own weights.
func (e *Engine) SyncParams() error {
	if e.opt.Composer != nil {
		e.opt.Composer.Compose()
		for _, ll := range e.lls {
			if err := e.be.Upload(ll.a, ll.pair.A); err != nil {
				return fmt.Errorf("engine: upload %s.lora_A: %w", ll.pair.Module.Path, err)
			}
			if err := e.be.Upload(ll.b, ll.pair.B); err != nil {
				return fmt.Errorf("engine: upload %s.lora_B: %w", ll.pair.Module.Path, err)
			}
		}
		return nil
	}
	if e.limit > 0 {
		return e.uploadLimited()
	}
	for _, p := range e.params {
		if p.buf == nil {
			continue // host-only
		}
		if err := e.be.Upload(p.buf, p.host.Data); err != nil {
			return fmt.Errorf("engine: upload %s: %w", p.host.Name, err)
		}
	}
	return e.doraNorms()
}

// Adapter returns the adapter whose A and B are the current host parameters (nil for "full").
func (e *Engine) Adapter() *lora.Adapter { return e.ad }

// NumTrainable returns the number of trainable values.
func (e *Engine) NumTrainable() int64 {
	var n int64
	for _, p := range e.params {
		n += int64(len(p.host.Data))
	}
	return n
}

// rngMagic starts a serialised RNG state, so that a foreign blob is rejected.
const rngMagic = "lctlrng1"

// RNGState returns the dropout RNG state (seed and call counter) for an exact resume.
func (e *Engine) RNGState() []byte {
	b := make([]byte, 0, len(rngMagic)+16)
	b = append(b, rngMagic...)
	b = binary.LittleEndian.AppendUint64(b, e.opt.Seed)
	return binary.LittleEndian.AppendUint64(b, e.calls)
}

// SetRNGState restores a state from RNGState. The seed must equal Options.Seed: a checkpoint
// from a run with another seed would not continue that run.
func (e *Engine) SetRNGState(s []byte) error {
	if len(s) != len(rngMagic)+16 || string(s[:len(rngMagic)]) != rngMagic {
		return errors.New("engine: the RNG state is not one written by RNGState")
	}
	seed := binary.LittleEndian.Uint64(s[len(rngMagic):])
	if seed != e.opt.Seed {
		return fmt.Errorf("engine: the RNG state was saved with seed %d, this run uses seed %d", seed, e.opt.Seed)
	}
	e.calls = binary.LittleEndian.Uint64(s[len(rngMagic)+8:])
	return nil
}

// Close releases the buffers the engine allocated. The model's own buffers stay with the model.
func (e *Engine) Close() {
	e.freeActs()
	for _, b := range e.owned {
		e.be.Free(b)
	}
	e.owned = nil
	e.params = nil
}
