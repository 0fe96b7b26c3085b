package backendtest

import (
	"testing"

	"github.com/loractl/loractl/internal/backend"
)

// chainParams names the weights of the one-layer model of the composite check, in order.
// Every one of them is trainable here (full fine-tuning plus a LoRA adapter on q_proj), so
// every backward op's gradient outputs are exercised through the whole chain.
var chainParams = []string{
	"embed", "norm1", "wq", "bq", "lora_A", "lora_B", "wk", "wv", "wo",
	"norm2", "wg", "wu", "wd", "normf", "lm_head",
}

// chainDims are the sizes of the composite check: two batch rows of five tokens, the first row
// holding two packed samples; GQA with 4 query and 2 key/value heads; a rank-3 adapter.
type chainDims struct {
	B, T, C, NH, NKV, D, F, V, R int
	eps, loraScale               float32
	tokens, targets, seg, pos    []int // (B·T) each
	invFreq                      []float32
}

// sizes returns the number of elements of each parameter.
func (d *chainDims) sizes() map[string]int {
	QD, KD := d.NH*d.D, d.NKV*d.D
	return map[string]int{
		"embed": d.V * d.C, "norm1": d.C, "wq": QD * d.C, "bq": QD, "lora_A": d.R * d.C,
		"lora_B": QD * d.R, "wk": KD * d.C, "wv": KD * d.C, "wo": d.C * QD, "norm2": d.C,
		"wg": d.F * d.C, "wu": d.F * d.C, "wd": d.C * d.F, "normf": d.C, "lm_head": d.V * d.C,
	}
}

// valid returns the number of counted targets.
func (d *chainDims) valid() int {
	n := 0
	for _, t := range d.targets {
		if t != backend.IgnoreIndex {
			n++
		}
	}
	return n
}

// refChainLoss is the float64 forward of the one-layer model, composed from the references:
//
//	x = embed[tokens]; h1 = rmsnorm(x)
//	q = h1·wqᵀ + bq + s·(h1·Aᵀ)·Bᵀ;  k = h1·wkᵀ;  v = h1·wvᵀ;  rope(q, k) at pos
//	x2 = x + attention(q, k, v, seg)·woᵀ
//	x3 = x2 + (silu(h2·wgᵀ)·(h2·wuᵀ))·wdᵀ,  h2 = rmsnorm(x2)
//	loss = mean over counted targets of CE(rmsnorm(x3)·lm_headᵀ)
func refChainLoss(d *chainDims, p map[string][]float64) float64 {
	N, QD, KD := d.B*d.T, d.NH*d.D, d.NKV*d.D
	eps := float64(d.eps)
	x := refEmbedding(p["embed"], d.tokens, d.C)
	h1 := refRMSNorm(x, p["norm1"], N, d.C, eps)
	q := refMatMul(h1, p["wq"], p["bq"], N, d.C, QD)
	lq := refMatMul(refMatMul(h1, p["lora_A"], nil, N, d.C, d.R), p["lora_B"], nil, N, d.R, QD)
	for i := range q {
		q[i] += float64(d.loraScale) * lq[i]
	}
	k := refMatMul(h1, p["wk"], nil, N, d.C, KD)
	v := refMatMul(h1, p["wv"], nil, N, d.C, KD)
	q = refRoPE(q, d.invFreq, d.pos, N, d.NH, d.D)
	k = refRoPE(k, d.invFreq, d.pos, N, d.NKV, d.D)
	a, _ := refAttention(q, k, v, d.B, d.T, d.T, d.NH, d.NKV, d.D, segVisible(d.seg, d.T))
	x2 := refAdd(x, refMatMul(a, p["wo"], nil, N, QD, d.C))
	h2 := refRMSNorm(x2, p["norm2"], N, d.C, eps)
	m := refSwiGLU(refMatMul(h2, p["wg"], nil, N, d.C, d.F), refMatMul(h2, p["wu"], nil, N, d.C, d.F))
	x3 := refAdd(x2, refMatMul(m, p["wd"], nil, N, d.F, d.C))
	logits := refMatMul(refRMSNorm(x3, p["normf"], N, d.C, eps), p["lm_head"], nil, N, d.C, d.V)
	sum := 0.0
	for _, l := range refCrossEntropy(logits, d.targets, N, d.V) {
		sum += l
	}
	return sum / float64(d.valid())
}

// backendChain runs the same model forward and backward on the backend's ops, the way a
// trainer composes them, and returns the mean loss and the gradient of every parameter.
func backendChain(t *testing.T, be backend.Backend, d *chainDims, p map[string]backend.Buffer) (float64, map[string][]float32) {
	tr := be.(backend.Trainer)
	B, T, C, NH, NKV, D, F, V, R := d.B, d.T, d.C, d.NH, d.NKV, d.D, d.F, d.V, d.R
	N, QD, KD := B*T, NH*D, NKV*D
	eps, s := d.eps, d.loraScale
	inv := upload(t, be, d.invFreq) // (D/2,)

	// Forward, keeping every activation that backward reads.
	x := be.Alloc(N * C) // (N, C)
	be.EmbeddingForward(x, p["embed"], d.tokens, C)
	h1 := be.Alloc(N * C) // (N, C)
	be.RMSNormForward(h1, x, p["norm1"], N, C, eps)
	q := be.Alloc(N * QD) // (N, NH·D)
	be.MatMulForward(q, h1, p["wq"], p["bq"], N, C, QD)
	xa := be.Alloc(N * R) // (N, R) adapter input projection
	be.MatMulForward(xa, h1, p["lora_A"], nil, N, C, R)
	lq := be.Alloc(N * QD) // (N, NH·D)
	be.MatMulForward(lq, xa, p["lora_B"], nil, N, R, QD)
	tr.Axpy(q, lq, s, N*QD)
	k := be.Alloc(N * KD) // (N, NKV·D)
	be.MatMulForward(k, h1, p["wk"], nil, N, C, KD)
	v := be.Alloc(N * KD) // (N, NKV·D)
	be.MatMulForward(v, h1, p["wv"], nil, N, C, KD)
	tr.RoPEForwardPos(q, inv, d.pos, N, NH, D)
	tr.RoPEForwardPos(k, inv, d.pos, N, NKV, D)
	a := be.Alloc(N * QD)           // (B, T, NH·D)
	att := be.Alloc(B * NH * T * T) // (B, NH, T, T)
	tr.AttentionTrainForward(a, att, q, k, v, d.seg, B, T, NH, NKV, D)
	o := be.Alloc(N * C) // (N, C)
	be.MatMulForward(o, a, p["wo"], nil, N, QD, C)
	x2 := be.Alloc(N * C) // (N, C)
	be.AddForward(x2, x, o, N*C)
	h2 := be.Alloc(N * C) // (N, C)
	be.RMSNormForward(h2, x2, p["norm2"], N, C, eps)
	gt := be.Alloc(N * F) // (N, F)
	be.MatMulForward(gt, h2, p["wg"], nil, N, C, F)
	up := be.Alloc(N * F) // (N, F)
	be.MatMulForward(up, h2, p["wu"], nil, N, C, F)
	m := be.Alloc(N * F) // (N, F)
	be.SwiGLUForward(m, gt, up, N*F)
	dn := be.Alloc(N * C) // (N, C)
	be.MatMulForward(dn, m, p["wd"], nil, N, F, C)
	x3 := be.Alloc(N * C) // (N, C)
	be.AddForward(x3, x2, dn, N*C)
	h3 := be.Alloc(N * C) // (N, C)
	be.RMSNormForward(h3, x3, p["normf"], N, C, eps)
	logits := be.Alloc(N * V) // (N, V)
	be.MatMulForward(logits, h3, p["lm_head"], nil, N, C, V)
	losses := be.Alloc(N) // (N,)
	tr.CrossEntropyForward(losses, logits, d.targets, N, V)
	loss := 0.0
	for _, l := range download(t, be, losses) {
		loss += float64(l)
	}
	loss /= float64(d.valid())

	// Backward. Gradient buffers start at zero (Alloc) and every op accumulates.
	sizes := d.sizes()
	g := map[string]backend.Buffer{}
	for _, name := range chainParams {
		g[name] = be.Alloc(sizes[name])
	}
	tr.CrossEntropyBackward(logits, logits, d.targets, N, V, float32(1/float64(d.valid()))) // in place: logits now dlogits
	dh3 := be.Alloc(N * C)                                                                  // (N, C)
	tr.MatMulBackward(dh3, g["lm_head"], nil, logits, h3, p["lm_head"], N, C, V)
	dx3 := be.Alloc(N * C) // (N, C)
	tr.RMSNormBackward(dx3, g["normf"], dh3, x3, p["normf"], N, C, eps)
	// x3 = x2 + dn: both branches receive dx3.
	dm := be.Alloc(N * F) // (N, F)
	tr.MatMulBackward(dm, g["wd"], nil, dx3, m, p["wd"], N, F, C)
	dgt, dup := be.Alloc(N*F), be.Alloc(N*F) // (N, F), (N, F)
	tr.SwiGLUBackward(dgt, dup, dm, gt, up, N*F)
	dh2 := be.Alloc(N * C) // (N, C)
	tr.MatMulBackward(dh2, g["wg"], nil, dgt, h2, p["wg"], N, C, F)
	tr.MatMulBackward(dh2, g["wu"], nil, dup, h2, p["wu"], N, C, F)
	dx2 := be.Alloc(N * C) // (N, C) residual path, plus the norm path below
	be.Copy(dx2, 0, dx3, 0, N*C)
	tr.RMSNormBackward(dx2, g["norm2"], dh2, x2, p["norm2"], N, C, eps)
	da := be.Alloc(N * QD) // (N, NH·D)
	tr.MatMulBackward(da, g["wo"], nil, dx2, a, p["wo"], N, QD, C)
	dq, dk, dv := be.Alloc(N*QD), be.Alloc(N*KD), be.Alloc(N*KD) // (N, NH·D), (N, NKV·D) ×2
	tr.AttentionBackward(dq, dk, dv, da, att, q, k, v, d.seg, B, T, NH, NKV, D)
	tr.RoPEBackwardPos(dq, inv, d.pos, N, NH, D)
	tr.RoPEBackwardPos(dk, inv, d.pos, N, NKV, D)
	dh1 := be.Alloc(N * C) // (N, C)
	tr.MatMulBackward(dh1, g["wq"], g["bq"], dq, h1, p["wq"], N, C, QD)
	dlq := be.Alloc(N * QD) // (N, NH·D) = s·dq
	tr.Axpy(dlq, dq, s, N*QD)
	dxa := be.Alloc(N * R) // (N, R)
	tr.MatMulBackward(dxa, g["lora_B"], nil, dlq, xa, p["lora_B"], N, R, QD)
	tr.MatMulBackward(dh1, g["lora_A"], nil, dxa, h1, p["lora_A"], N, C, R)
	tr.MatMulBackward(dh1, g["wk"], nil, dk, h1, p["wk"], N, C, KD)
	tr.MatMulBackward(dh1, g["wv"], nil, dv, h1, p["wv"], N, C, KD)
	dx := be.Alloc(N * C) // (N, C)
	be.Copy(dx, 0, dx2, 0, N*C)
	tr.RMSNormBackward(dx, g["norm1"], dh1, x, p["norm1"], N, C, eps)
	tr.EmbeddingBackward(g["embed"], dx, d.tokens, C)

	grads := map[string][]float32{}
	for _, name := range chainParams {
		grads[name] = download(t, be, g[name])
	}
	return loss, grads
}

// runChain checks the composite model's loss and every parameter gradient against the float64
// reference chain and its finite differences.
func runChain(t *testing.T, newBackend func() backend.Backend, rep *report) {
	be, r := newBackend(), seededRand(40)
	d := &chainDims{B: 2, T: 5, C: 8, NH: 4, NKV: 2, D: 4, F: 12, V: 11, R: 3, eps: 1e-5, loraScale: 2}
	d.invFreq = ropeInvFreq(d.D, 10000)
	N := d.B * d.T
	d.seg = []int{0, 0, 1, 1, 1, 0, 0, 0, 0, 0}
	d.pos = []int{0, 1, 0, 1, 2, 0, 1, 2, 3, 4}
	d.tokens = make([]int, N)
	for i := range d.tokens {
		d.tokens[i] = r.IntN(d.V)
	}
	d.tokens[7] = d.tokens[2] // a repeated token accumulates in the embedding gradient
	d.targets = make([]int, N)
	for i := range d.targets {
		// next token of the same sample, as a trainer builds them; -100 at each sample's end
		if i+1 < N && (i+1)%d.T != 0 && d.seg[i+1] == d.seg[i] {
			d.targets[i] = d.tokens[i+1]
		} else {
			d.targets[i] = backend.IgnoreIndex
		}
	}
	d.targets[5] = backend.IgnoreIndex // a prompt token

	sizes := d.sizes()
	pb := map[string]backend.Buffer{}
	pf := map[string][]float64{}
	for _, name := range chainParams {
		w := randn(r, sizes[name], 0.5)
		if name == "norm1" || name == "norm2" || name == "normf" {
			for i := range w {
				w[i] = 1 + w[i]/4
			}
		}
		pb[name] = upload(t, be, w)
		pf[name] = f64(w)
	}

	loss, grads := backendChain(t, be, d, pb)
	shape := "B=2 T=5 C=8 NH=4 NKV=2 D=4 F=12 V=11 r=3"
	checkClose(t, rep, "chain loss", shape, []float32{float32(loss)}, []float64{refChainLoss(d, pf)}, 1e-5, 1e-5)
	for _, name := range chainParams {
		fd := numGrad(func() float64 { return refChainLoss(d, pf) }, pf[name], fdEps)
		checkGrad(t, rep, "chain d"+name, shape, grads[name], fd)
	}
}
