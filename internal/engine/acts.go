package engine

import "github.com/loractl/loractl/internal/backend"

// layerActs are the activations of one decoder block that its backward pass reads (llm.c's
// ActivationTensors, per layer). N = B·T tokens.
type layerActs struct {
	h1   backend.Buffer    // (N, C) input_layernorm output
	qpre backend.Buffer    // (N, NH·D) q_proj output before q_norm (qwen3 only, else nil)
	kpre backend.Buffer    // (N, NKV·D) k_proj output before k_norm (qwen3 only, else nil)
	q    backend.Buffer    // (N, NH·D) queries after RoPE
	k    backend.Buffer    // (N, NKV·D) keys after RoPE
	v    backend.Buffer    // (N, NKV·D) values
	att  backend.Buffer    // (B, NH, T, T) attention probabilities, or (B, NH, T) their logsumexp with flash attention
	a    backend.Buffer    // (N, NH·D) attention output, o_proj's input
	x2   backend.Buffer    // (N, C) residual after the attention block
	h2   backend.Buffer    // (N, C) post_attention_layernorm output
	g    backend.Buffer    // (N, F) gate_proj output
	up   backend.Buffer    // (N, F) up_proj output
	mm   backend.Buffer    // (N, F) silu(g)·up, down_proj's input
	u    [7]backend.Buffer // (N, r) each: A·drop(x) of every adapted Linear, nil when not adapted
	z    [7]backend.Buffer // (N, out) each: DoRA's W0·x + s·B·A·drop(x) before the magnitude, nil for LoRA
}

// acts holds every activation, gradient and scratch buffer of one (B, T) shape.
type acts struct {
	B, T int
	all  []backend.Buffer // everything allocated here, for freeing
	// notKept counts the floats of Linear inputs that are written to a shared scratch instead
	// of being kept per layer (no dW, no trainable dA reads them: LoRA-FA, unadapted Linears).
	notKept int64

	xs     []backend.Buffer // (L+1) each (N, C): the input of every block, then the final residual
	layers []layerActs      // (L), or (1) shared by all blocks with gradient checkpointing
	hf     backend.Buffer   // (N, C) final norm output
	logits backend.Buffer   // (CH, V) logits of one chunk of rows, then their gradient (in place)
	losses backend.Buffer   // (N) per-token loss
	ch     int              // CH, the rows of one lm_head chunk (lmChunk)
	hfc    backend.Buffer   // (CH, C) one chunk of hf, when CH < N
	dhc    backend.Buffer   // (CH, C) its gradient, when CH < N
	lossc  backend.Buffer   // (CH) its losses, when CH < N
	out    backend.Buffer   // (N, C) o_proj / down_proj output before the residual add

	dres       backend.Buffer         // (N, C) gradient of the residual stream
	dh         backend.Buffer         // (N, C) gradient of a norm output (h1, h2, hf)
	da, dq     backend.Buffer         // (N, NH·D) each
	dk, dv     backend.Buffer         // (N, NKV·D) each
	dqn, dkn   backend.Buffer         // (N, NH·D), (N, NKV·D): gradients before q_norm/k_norm (qwen3), else nil
	dmm        backend.Buffer         // (N, F)
	dg, dup    backend.Buffer         // (N, F) each
	du         backend.Buffer         // (N, r) LoRA: s·dy·B (nil for full)
	dz         map[int]backend.Buffer // width → (N, width): DoRA's dy·diag(m/n), per DoRA output width
	xd, dxd    map[int]backend.Buffer // width → (N, width): drop(x) and its gradient (dropout > 0 only)
	hostX      []float32              // (N·maxIn) host scratch for dropout
	hostM      []float32              // (N·maxIn) dropout mask: 0 or 1/(1−p)
	hostLosses []float32              // (N)
	pos        []int                  // (N) positions when the batch gives none
}

// newActs lays out the buffers for (B, T) through alloc. MemoryPlan calls it with a counting
// allocator, so the plan is exactly what training allocates.
func (e *Engine) newActs(B, T int, ckpt bool, alloc func(n int) backend.Buffer) *acts {
	cfg := e.cfg
	N, C, F, V := B*T, cfg.HiddenSize, cfg.IntermediateSize, cfg.VocabSize
	Q, KV, NH := cfg.QDim(), cfg.KVDim(), cfg.NumAttentionHeads
	L := cfg.NumHiddenLayers
	a := &acts{B: B, T: T}
	get := func(n int) backend.Buffer {
		b := alloc(n)
		a.all = append(a.all, b)
		return b
	}
	a.xs = make([]backend.Buffer, L+1)
	for l := range a.xs {
		a.xs[l] = get(N * C)
	}
	nl := L
	if ckpt {
		nl = 1
	}
	a.layers = make([]layerActs, nl)
	// A Linear input that no backward product reads (no dW, no trainable dA: frozen weights,
	// LoRA-FA) is written to one scratch buffer shared by every layer instead of being kept.
	var scratchC, scratchF backend.Buffer
	keep := func(l int, lins ...int) bool {
		for _, i := range lins {
			if e.inputRead(l, i, ckpt) {
				return true
			}
		}
		return false
	}
	input := func(l, n int, scratch *backend.Buffer, lins ...int) backend.Buffer {
		if keep(l, lins...) {
			return get(n)
		}
		a.notKept += int64(n)
		if *scratch == nil {
			*scratch = get(n)
		}
		return *scratch
	}
	for l := range a.layers {
		la := &a.layers[l]
		la.h1 = input(l, N*C, &scratchC, linQ, linK, linV)
		if cfg.QKNorm() {
			la.qpre, la.kpre = get(N*Q), get(N*KV)
		}
		la.q, la.k, la.v = get(N*Q), get(N*KV), get(N*KV)
		if e.fa != nil {
			la.att = get(B * NH * T) // the logsumexp of every attention row
		} else {
			la.att = get(B * NH * T * T)
		}
		la.a = get(N * Q)
		la.x2, la.h2 = get(N*C), input(l, N*C, &scratchC, linGate, linUp)
		la.g, la.up, la.mm = get(N*F), get(N*F), input(l, N*F, &scratchF, linDown)
		for i := range la.u {
			// With checkpointing the shared set needs a u for every Linear adapted in any layer.
			if r := e.rankAt(l, i, ckpt); r > 0 {
				la.u[i] = get(N * r)
			}
			if e.doraAt(l, i, ckpt) {
				la.z[i] = get(N * e.blocks[0].lin[i].out)
			}
		}
	}
	a.ch = lmChunk(N, V)
	a.hf, a.logits, a.losses, a.out = get(N*C), get(a.ch*V), get(N), get(N*C)
	if a.ch < N {
		a.hfc, a.dhc, a.lossc = get(a.ch*C), get(a.ch*C), get(a.ch)
	}
	a.dres, a.dh = get(N*C), get(N*C)
	a.da, a.dq, a.dk, a.dv = get(N*Q), get(N*Q), get(N*KV), get(N*KV)
	if cfg.QKNorm() {
		a.dqn, a.dkn = get(N*Q), get(N*KV)
	}
	a.dmm, a.dg, a.dup = get(N*F), get(N*F), get(N*F)
	if e.ad != nil {
		a.du = get(N * e.ad.MaxRank())
		for _, bl := range e.blocks {
			for _, lin := range bl.lin {
				if lin.lora != nil && lin.lora.dora != nil && a.dz[lin.out] == nil {
					if a.dz == nil {
						a.dz = map[int]backend.Buffer{}
					}
					a.dz[lin.out] = get(N * lin.out)
				}
			}
		}
		if e.opt.Dropout > 0 {
			a.xd, a.dxd = map[int]backend.Buffer{}, map[int]backend.Buffer{}
			for _, bl := range e.blocks {
				for _, lin := range bl.lin {
					if lin.lora != nil && a.xd[lin.in] == nil {
						a.xd[lin.in], a.dxd[lin.in] = get(N*lin.in), get(N*lin.in)
					}
				}
			}
		}
	}
	return a
}

// rankAt returns the LoRA rank of Linear i of layer l (0 when not adapted); with shared
// (checkpointing) activations, the largest over all layers.
func (e *Engine) rankAt(l, i int, shared bool) int {
	r := 0
	for j, bl := range e.blocks {
		if ll := bl.lin[i].lora; ll != nil && (shared || j == l) {
			r = max(r, ll.r)
		}
	}
	return r
}

// doraAt reports whether Linear i of layer l is a DoRA one (with shared activations, in any
// layer).
func (e *Engine) doraAt(l, i int, shared bool) bool {
	for j, bl := range e.blocks {
		if ll := bl.lin[i].lora; ll != nil && ll.dora != nil && (shared || j == l) {
			return true
		}
	}
	return false
}

// inputRead reports whether the backward pass reads the input of Linear i of layer l: for
// its weight gradient (full fine-tuning) or for a trainable LoRA A; with shared
// (checkpointing) activations, in any layer.
func (e *Engine) inputRead(l, i int, shared bool) bool {
	for j, bl := range e.blocks {
		lin := bl.lin[i]
		if (shared || j == l) && (lin.dw != nil || (lin.lora != nil && lin.lora.da != nil)) {
			return true
		}
	}
	return false
}

// ensureActs makes e.act fit (B, T), reallocating when the shape changes.
func (e *Engine) ensureActs(B, T int) {
	if e.act != nil && e.act.B == B && e.act.T == T {
		return
	}
	e.freeActs()
	a := e.newActs(B, T, e.opt.GradCheckpointing, e.be.Alloc)
	N, maxIn := B*T, 0
	for w := range a.xd {
		maxIn = max(maxIn, w)
	}
	a.hostX, a.hostM = make([]float32, N*maxIn), make([]float32, N*maxIn)
	a.hostLosses = make([]float32, N)
	a.pos = make([]int, N)
	e.act = a
}

// freeActs releases the activation buffers.
func (e *Engine) freeActs() {
	if e.act == nil {
		return
	}
	for _, b := range e.act.all {
		e.be.Free(b)
	}
	e.act = nil
}

// layer returns the activations of block l (the shared set with gradient checkpointing).
func (a *acts) layer(l int) *layerActs {
	if len(a.layers) == 1 {
		return &a.layers[0]
	}
	return &a.layers[l]
}

// MemoryPlan is the memory a training step needs, in bytes, on the device.
type MemoryPlan struct {
	Weights                    int64 // the model's weights as stored (float32, bfloat16 or packed)
	Trainable                  int64 // trainable values (the LoRA A/B; for full, the weights themselves)
	Grads                      int64 // their gradients
	Optimizer                  int64 // AdamW's two moments (held on the host by internal/optim)
	Activations                int64 // activations, gradients of activations and scratch, as configured
	ActivationsNoCheckpointing int64 // the same without gradient checkpointing
	// InputsNotKept is the memory of Linear inputs that no backward product reads (frozen
	// weights with a frozen or absent LoRA A: LoRA-FA), shared by the layers instead of kept
	// per layer; it is not in Activations except for the one shared scratch per width.
	InputsNotKept int64
}

// countBuf is a Buffer of a given length that holds nothing: MemoryPlan's allocator.
type countBuf int

// Len returns the buffer's length.
func (c countBuf) Len() int { return int(c) }

// MemoryPlan returns the memory of a micro-batch of B rows of T tokens, counted with the
// layout that ForwardBackward allocates.
func (e *Engine) MemoryPlan(B, T int) MemoryPlan {
	var notKept int64
	count := func(ckpt bool) int64 {
		var n int64
		a := e.newActs(B, T, ckpt, func(k int) backend.Buffer { n += int64(k); return countBuf(k) })
		if ckpt == e.opt.GradCheckpointing {
			notKept = 4 * a.notKept
		}
		return 4 * n
	}
	nt := 4 * e.NumTrainable()
	return MemoryPlan{
		Weights:                    e.m.WeightMemory().Bytes,
		Trainable:                  nt,
		Grads:                      nt,
		Optimizer:                  2 * nt,
		Activations:                count(e.opt.GradCheckpointing),
		ActivationsNoCheckpointing: count(false),
		InputsNotKept:              notKept,
	}
}

// lmLogitsBudget is the most logits (floats) one lm_head chunk holds: 8 Mi floats, 32 MiB, so
// that a chunk's logits stay in the last-level cache between the product, the cross-entropy
// and the backward product, and the memory of a step does not grow with B·T·V.
var lmLogitsBudget = 1 << 26 // a variable so that tests can force chunking

// lmChunk returns how many rows of the N token rows the lm_head and the loss take at a time:
// all of them when their logits fit lmLogitsBudget, else the most that fit (at least 16).
func lmChunk(N, V int) int {
	if N*V <= lmLogitsBudget {
		return N
	}
	return min(N, max(16, lmLogitsBudget/V))
}
