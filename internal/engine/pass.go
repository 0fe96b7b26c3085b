package engine

import (
	"fmt"

	"github.com/loractl/loractl/internal/backend"
)

// ForwardBackward runs forward and backward over one micro-batch, ADDING gradients into the
// engine's gradient buffers scaled by gradScale (the loop passes 1/targets-of-the-optimizer-step
// so the loss is a mean over the step). It returns the SUM of the per-token losses over the
// targets and the number of targets. LoRA dropout is active.
func (e *Engine) ForwardBackward(b Batch, gradScale float32) (lossSum float64, nTargets int, err error) {
	pos, err := e.prepare(&b)
	if err != nil {
		return 0, 0, err
	}
	e.calls++ // a new dropout stream for this call
	lossSum, nTargets, err = e.forward(&b, pos, true, &gradScale)
	if err != nil {
		return 0, 0, err
	}
	if err := e.backward(&b, pos, gradScale); err != nil {
		return 0, 0, err
	}
	return lossSum, nTargets, nil
}

// Loss runs the forward pass only, without dropout (evaluation), and returns the sum of the
// per-token losses over the targets and the number of targets.
func (e *Engine) Loss(b Batch) (lossSum float64, nTargets int, err error) {
	pos, err := e.prepare(&b)
	if err != nil {
		return 0, 0, err
	}
	return e.forward(&b, pos, false, nil)
}

// prepare validates b against the model and sizes the buffers; it returns the positions.
func (e *Engine) prepare(b *Batch) ([]int, error) {
	if err := e.check(b); err != nil {
		return nil, err
	}
	e.ensureActs(b.B, b.T)
	if b.Positions != nil {
		return b.Positions, nil
	}
	pos := e.act.pos // (B·T)
	for i := range pos {
		pos[i] = i % b.T
	}
	return pos, nil
}

// check validates a batch: shapes, token and target ids, positions.
func (e *Engine) check(b *Batch) error {
	cfg := e.cfg
	if b.B < 1 || b.T < 1 {
		return fmt.Errorf("engine: batch of %d×%d tokens; B and T must be at least 1", b.B, b.T)
	}
	N := b.B * b.T
	if b.T > cfg.MaxPositionEmbeddings {
		return fmt.Errorf("engine: sequence length %d exceeds max_position_embeddings %d of %s", b.T, cfg.MaxPositionEmbeddings, cfg.Path)
	}
	if cfg.SlidingWindow > 0 && b.T > cfg.SlidingWindow {
		return fmt.Errorf("engine: sequence length %d exceeds the sliding_window %d of %s; sliding-window attention is not implemented", b.T, cfg.SlidingWindow, cfg.Path)
	}
	for _, f := range []struct {
		name string
		s    []int
		opt  bool
	}{{"tokens", b.Tokens, false}, {"targets", b.Targets, false}, {"positions", b.Positions, true}, {"segments", b.Segments, true}} {
		if (f.s != nil || !f.opt) && len(f.s) != N {
			return fmt.Errorf("engine: %d %s for a %d×%d batch (want %d)", len(f.s), f.name, b.B, b.T, N)
		}
	}
	V := cfg.VocabSize
	for i := 0; i < N; i++ {
		if id := b.Tokens[i]; id < 0 || id >= V {
			return fmt.Errorf("engine: token %d at index %d is outside the vocabulary [0, %d)", id, i, V)
		}
		if id := b.Targets[i]; id != backend.IgnoreIndex && (id < 0 || id >= V) {
			return fmt.Errorf("engine: target %d at index %d is outside the vocabulary [0, %d) and is not %d (ignored)", id, i, V, backend.IgnoreIndex)
		}
		if b.Positions != nil {
			if p := b.Positions[i]; p < 0 || p >= cfg.MaxPositionEmbeddings {
				return fmt.Errorf("engine: position %d at index %d is outside [0, %d)", p, i, cfg.MaxPositionEmbeddings)
			}
		}
	}
	return nil
}

// forward runs the model over the batch, keeping what backward needs, and returns the loss sum
// and the number of targets. train turns LoRA dropout on. With gradScale set, it also runs the
// lm_head's backward (scaled by *gradScale) chunk by chunk with the loss, leaving ∂L/∂hf in
// a.dh (and the lm_head's gradient in dLM when it trains), and backward starts from there.
func (e *Engine) forward(b *Batch, pos []int, train bool, gradScale *float32) (float64, int, error) {
	cfg, be, a := e.cfg, e.be, e.act
	N, C, V := b.B*b.T, cfg.HiddenSize, cfg.VocabSize
	L := len(e.blocks)
	be.EmbeddingForward(a.xs[0], e.embed, b.Tokens, C) // xs[0] (N, C)
	for l := 0; l < L; l++ {
		if err := e.blockForward(l, b, pos, train); err != nil {
			return 0, 0, err
		}
	}
	be.RMSNormForward(a.hf, a.xs[L], e.norm, N, C, float32(cfg.RMSNormEps)) // hf (N, C)
	// The lm_head and the loss run over chunks of a.ch rows, so the logits never exist for
	// all N rows at once. With gradScale, each chunk's logits become their gradient in the
	// same pass and go straight into dh = dlogits·W (and, when it trains, dLM += dlogitsᵀ·hf).
	for c0 := 0; c0 < N; c0 += a.ch {
		n := min(a.ch, N-c0)
		hf, dh, losses := a.hf, a.dh, a.losses // (n, C), (n, C), (n) when the chunk is everything
		if n < N {
			hf, dh, losses = a.hfc, a.dhc, a.lossc
			be.Copy(hf, 0, a.hf, c0*C, n*C)
		}
		tg := b.Targets[c0 : c0+n]
		be.MatMulForward(a.logits, hf, e.lmHead, nil, n, C, V) // logits (n, V)
		if gradScale != nil {
			be.CrossEntropyForwardBackward(losses, a.logits, a.logits, tg, n, V, *gradScale) // losses (n); logits now dlogits
			be.Zero(dh, n*C)
			be.MatMulBackward(dh, e.dLM, nil, a.logits, hf, e.lmHead, n, C, V) // dh (n, C)
			if n < N {
				be.Copy(a.dh, c0*C, dh, 0, n*C)
			}
		} else {
			be.CrossEntropyForward(losses, a.logits, tg, n, V) // losses (n)
		}
		if n < N {
			be.Copy(a.losses, c0, losses, 0, n)
		}
	}
	if err := be.Download(a.hostLosses, a.losses); err != nil {
		return 0, 0, fmt.Errorf("engine: download losses: %w", err)
	}
	sum, n := 0.0, 0
	for i, t := range b.Targets {
		if t != backend.IgnoreIndex {
			sum += float64(a.hostLosses[i])
			n++
		}
	}
	return sum, n, nil
}

// backward propagates gradScale·∂(Σ losses) from the logits to every trainable tensor. The
// forward's activations are in e.act (with checkpointing, only the block inputs and the last
// block's activations).
func (e *Engine) backward(b *Batch, pos []int, gradScale float32) error {
	cfg, be, a := e.cfg, e.be, e.act
	N, C := b.B*b.T, cfg.HiddenSize
	L := len(e.blocks)
	eps := float32(cfg.RMSNormEps)

	// a.dh already holds ∂L/∂hf: the forward computed it chunk by chunk with the loss.
	be.Zero(a.dres, N*C)
	be.RMSNormBackward(a.dres, e.dNorm, a.dh, a.xs[L], e.norm, N, C, eps) // dres (N, C) = ∂L/∂xs[L]
	for l := L - 1; l >= 0; l-- {
		if e.opt.GradCheckpointing && l < L-1 {
			// Recompute block l's activations from its saved input (the shared set still
			// holds the last block's from the forward pass). Same ops, same masks: bitwise equal.
			if err := e.blockForward(l, b, pos, true); err != nil {
				return err
			}
		}
		if err := e.blockBackward(l, b, pos); err != nil {
			return err
		}
	}
	if e.dEmbed != nil {
		be.EmbeddingBackward(e.dEmbed, a.dres, b.Tokens, C)
	}
	return nil
}

// blockForward runs decoder block l: xs[l] → xs[l+1], saving its activations.
func (e *Engine) blockForward(l int, b *Batch, pos []int, train bool) error {
	cfg, be, a := e.cfg, e.be, e.act
	N, C, F := b.B*b.T, cfg.HiddenSize, cfg.IntermediateSize
	NH, NKV, D := cfg.NumAttentionHeads, cfg.NumKeyValueHeads, cfg.HeadDim
	eps := float32(cfg.RMSNormEps)
	bl, la, x := &e.blocks[l], a.layer(l), a.xs[l]
	var err error
	lin := func(y, x backend.Buffer, i int) { // y = Linear i of the block (x), LoRA included
		if err == nil {
			err = e.linearForward(y, x, &bl.lin[i], la.u[i], N, l, train)
		}
	}

	// Attention: x2 = x + o_proj(attention(rope(norm(q)), rope(norm(k)), v)) of h1 = norm(x).
	be.RMSNormForward(la.h1, x, bl.attnNorm, N, C, eps) // h1 (N, C)
	q, k := la.q, la.k
	if bl.qNorm != nil { // qwen3: q_norm/k_norm per head, before RoPE
		q, k = la.qpre, la.kpre
	}
	lin(q, la.h1, linQ)    // (N, NH·D)
	lin(k, la.h1, linK)    // (N, NKV·D)
	lin(la.v, la.h1, linV) // v (N, NKV·D)
	if bl.qNorm != nil {
		be.RMSNormForward(la.q, la.qpre, bl.qNorm, N*NH, D, eps)  // q (N, NH·D)
		be.RMSNormForward(la.k, la.kpre, bl.kNorm, N*NKV, D, eps) // k (N, NKV·D)
	}
	be.RoPEForwardPos(la.q, e.invFreq, pos, N, NH, D)
	be.RoPEForwardPos(la.k, e.invFreq, pos, N, NKV, D)
	if e.fa != nil {
		e.fa.AttentionTrainForwardLSE(la.a, la.att, la.q, la.k, la.v, b.Segments, b.B, b.T, NH, NKV, D) // a (N, NH·D)
	} else {
		be.AttentionTrainForward(la.a, la.att, la.q, la.k, la.v, b.Segments, b.B, b.T, NH, NKV, D) // a (N, NH·D)
	}
	lin(a.out, la.a, linO)              // out (N, C)
	be.AddForward(la.x2, x, a.out, N*C) // x2 (N, C)

	// MLP: xs[l+1] = x2 + down_proj(silu(gate_proj(h2))·up_proj(h2)) of h2 = norm(x2).
	be.RMSNormForward(la.h2, la.x2, bl.mlpNorm, N, C, eps) // h2 (N, C)
	lin(la.g, la.h2, linGate)                              // g (N, F)
	lin(la.up, la.h2, linUp)                               // up (N, F)
	be.SwiGLUForward(la.mm, la.g, la.up, N*F)              // mm (N, F)
	lin(a.out, la.mm, linDown)                             // out (N, C)
	be.AddForward(a.xs[l+1], la.x2, a.out, N*C)            // xs[l+1] (N, C)
	return err
}

// blockBackward runs the backward of block l. On entry a.dres holds ∂L/∂xs[l+1]; on return
// ∂L/∂xs[l]. Weight gradients are added into the block's gradient buffers.
func (e *Engine) blockBackward(l int, b *Batch, pos []int) error {
	cfg, be, a := e.cfg, e.be, e.act
	N, C, F := b.B*b.T, cfg.HiddenSize, cfg.IntermediateSize
	NH, NKV, D := cfg.NumAttentionHeads, cfg.NumKeyValueHeads, cfg.HeadDim
	Q, KV := cfg.QDim(), cfg.KVDim()
	eps := float32(cfg.RMSNormEps)
	bl, la := &e.blocks[l], a.layer(l)

	// MLP. The residual passes dres through unchanged; the branch adds to it.
	be.Zero(a.dmm, N*F)
	if err := e.linearBackward(a.dmm, a.dres, la.mm, &bl.lin[linDown], la.u[linDown], N, l); err != nil { // dmm (N, F)
		return err
	}
	be.Zero(a.dg, N*F)
	be.Zero(a.dup, N*F)
	be.SwiGLUBackward(a.dg, a.dup, a.dmm, la.g, la.up, N*F) // dg, dup (N, F)
	be.Zero(a.dh, N*C)
	if err := e.linearBackward(a.dh, a.dg, la.h2, &bl.lin[linGate], la.u[linGate], N, l); err != nil { // dh (N, C)
		return err
	}
	if err := e.linearBackward(a.dh, a.dup, la.h2, &bl.lin[linUp], la.u[linUp], N, l); err != nil {
		return err
	}
	be.RMSNormBackward(a.dres, bl.dMLPNorm, a.dh, la.x2, bl.mlpNorm, N, C, eps) // dres (N, C) = ∂L/∂x2

	// Attention.
	be.Zero(a.da, N*Q)
	if err := e.linearBackward(a.da, a.dres, la.a, &bl.lin[linO], la.u[linO], N, l); err != nil { // da (N, NH·D)
		return err
	}
	be.Zero(a.dq, N*Q)
	be.Zero(a.dk, N*KV)
	be.Zero(a.dv, N*KV)
	if e.fa != nil {
		e.fa.AttentionBackwardLSE(a.dq, a.dk, a.dv, a.da, la.a, la.att, la.q, la.k, la.v, b.Segments, b.B, b.T, NH, NKV, D)
	} else {
		be.AttentionBackward(a.dq, a.dk, a.dv, a.da, la.att, la.q, la.k, la.v, b.Segments, b.B, b.T, NH, NKV, D)
	}
	be.RoPEBackwardPos(a.dq, e.invFreq, pos, N, NH, D) // dq (N, NH·D) = ∂L/∂(normed q)
	be.RoPEBackwardPos(a.dk, e.invFreq, pos, N, NKV, D)
	dq, dk := a.dq, a.dk
	if bl.qNorm != nil {
		be.Zero(a.dqn, N*Q)
		be.Zero(a.dkn, N*KV)
		be.RMSNormBackward(a.dqn, bl.dQNorm, a.dq, la.qpre, bl.qNorm, N*NH, D, eps) // dqn (N, NH·D)
		be.RMSNormBackward(a.dkn, bl.dKNorm, a.dk, la.kpre, bl.kNorm, N*NKV, D, eps)
		dq, dk = a.dqn, a.dkn
	}
	be.Zero(a.dh, N*C)
	for _, s := range []struct {
		dy  backend.Buffer
		lin int
	}{{dq, linQ}, {dk, linK}, {a.dv, linV}} {
		if err := e.linearBackward(a.dh, s.dy, la.h1, &bl.lin[s.lin], la.u[s.lin], N, l); err != nil { // dh (N, C)
			return err
		}
	}
	be.RMSNormBackward(a.dres, bl.dAttnNorm, a.dh, a.xs[l], bl.attnNorm, N, C, eps) // dres (N, C) = ∂L/∂xs[l]
	return nil
}

// linearForward computes y (N, out) = x·Wᵀ + b, plus s·B·(A·drop(x)) when lin is adapted,
// saving u (N, r) = s·drop(x)·Aᵀ (the scale folded into the narrow factor, so the wide output
// takes one accumulating product and no temporary).
func (e *Engine) linearForward(y, x backend.Buffer, lin *linear, u backend.Buffer, N, layer int, train bool) error {
	be := e.be
	ll := lin.lora
	bias := lin.b
	if ll != nil && ll.dora != nil {
		bias = nil // DoRA scales W0·x + s·B·A·x, then adds the bias
	}
	be.MatMulForward(y, x, lin.w, bias, N, lin.in, lin.out)
	if ll == nil {
		return nil
	}
	xin := x // (N, in)
	if train && e.opt.Dropout > 0 {
		var err error
		if xin, err = e.dropInput(x, lin, N, layer); err != nil {
			return err
		}
	}
	r := ll.r
	be.MatMulForward(u, xin, ll.a, nil, N, lin.in, r) // u (N, r) = drop(x)·Aᵀ
	be.Scale(u, ll.s, N*r)                            // u = s·drop(x)·Aᵀ
	be.MatMulForwardAcc(y, u, ll.b, N, r, lin.out)    // y (N, out) += u·Bᵀ
	if ll.dora != nil {
		e.doraForward(y, e.act.layer(layer).z[lin.idx], lin, N) // y = z·diag(m/n) + bias
	}
	return nil
}

// linearBackward adds the gradients of y = x·Wᵀ + b (+ s·B·A·drop(x)) given dy (N, out):
// dx (N, in) += dy·W (+ mask⊙(du·A)); dW, db when trainable; dA, dB when adapted. The LoRA
// path always trains with dropout active (backward follows ForwardBackward's forward).
func (e *Engine) linearBackward(dx, dy, x backend.Buffer, lin *linear, u backend.Buffer, N, layer int) error {
	be := e.be
	if ll := lin.lora; ll != nil && ll.dora != nil {
		dz := e.act.dz[lin.out] // (N, out) = dy·diag(m/n); Σ dy·z kept on the device for dm
		e.doraBackward(dz, dy, e.act.layer(layer).z[lin.idx], lin, N)
		dy = dz
	}
	be.MatMulBackward(dx, lin.dw, lin.db, dy, x, lin.w, N, lin.in, lin.out)
	ll := lin.lora
	if ll == nil {
		return nil
	}
	a, r := e.act, ll.r
	be.Zero(a.du, N*r)
	be.MatMulBackward(a.du, ll.db, nil, dy, u, ll.b, N, r, lin.out) // du (N, r) = dy·B; dB += dyᵀ·u (u holds s·A·drop(x))
	be.Scale(a.du, ll.s, N*r)                                       // du = s·dy·B = ∂L/∂(drop(x)·Aᵀ)
	if e.opt.Dropout == 0 {
		be.MatMulBackward(dx, ll.da, nil, a.du, x, ll.a, N, lin.in, r) // dA += duᵀ·x (unless frozen); dx += du·A
		return nil
	}
	xd := x
	if ll.da != nil {
		var err error
		if xd, err = e.dropInput(x, lin, N, layer); err != nil { // (N, in), the same mask as the forward's
			return err
		}
	} else {
		e.fillMask(a.hostM[:N*lin.in], layer, lin.idx) // frozen A: only the mask, for dx; x is not read
	}
	dxd := a.dxd[lin.in] // (N, in)
	be.Zero(dxd, N*lin.in)
	be.MatMulBackward(dxd, ll.da, nil, a.du, xd, ll.a, N, lin.in, r) // dA += duᵀ·drop(x); dxd = du·A
	hx, hm := a.hostX[:N*lin.in], a.hostM[:N*lin.in]
	if err := be.Download(hx, dxd); err != nil {
		return fmt.Errorf("engine: dropout: download: %w", err)
	}
	for i := range hx {
		hx[i] *= hm[i]
	}
	if err := be.Upload(dxd, hx); err != nil {
		return fmt.Errorf("engine: dropout: upload: %w", err)
	}
	be.Axpy(dx, dxd, 1, N*lin.in)
	return nil
}

// dropInput fills a.xd[in] (N, in) with drop(x) for the adapted Linear lin of layer, and leaves
// the mask in a.hostM. The mask depends only on (seed, call counter, layer, module), so a
// recomputation draws the same one.
func (e *Engine) dropInput(x backend.Buffer, lin *linear, N, layer int) (backend.Buffer, error) {
	a := e.act
	n := N * lin.in
	hx, hm := a.hostX[:n], a.hostM[:n]
	e.fillMask(hm, layer, lin.idx)
	if err := e.be.Download(hx, x); err != nil {
		return nil, fmt.Errorf("engine: dropout: download: %w", err)
	}
	for i := range hx {
		hx[i] *= hm[i]
	}
	xd := a.xd[lin.in] // (N, in)
	if err := e.be.Upload(xd, hx); err != nil {
		return nil, fmt.Errorf("engine: dropout: upload: %w", err)
	}
	return xd, nil
}

// fillMask writes an inverted-dropout mask into m: 0 with probability p, else 1/(1−p), from
// the PCG stream of (seed, call counter, layer, module).
func (e *Engine) fillMask(m []float32, layer, module int) {
	p := e.opt.Dropout
	scale := float32(1 / (1 - p))
	stream := splitmix64(e.calls<<24 ^ uint64(layer)<<4 ^ uint64(module))
	e.pcg.Seed(e.opt.Seed, stream)
	for i := range m {
		// rand.Rand.Float64 of the PCG, without allocating a Rand per call.
		if float64(e.pcg.Uint64()<<11>>11)/(1<<53) < p {
			m[i] = 0
		} else {
			m[i] = scale
		}
	}
}

// splitmix64 scrambles a counter into a well-mixed 64-bit stream id.
func splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}
