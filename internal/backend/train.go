package backend

// IgnoreIndex marks a target that takes no part in the loss (a prompt token, padding), as in
// PyTorch's cross_entropy(ignore_index=-100).
const IgnoreIndex = -100

// Trainer is the optional capability of backends that can train: the forward ops that keep what
// the backward pass needs, and the backward ops. Callers find it with a type assertion,
//
//	tr, ok := b.(backend.Trainer)
//
// Conventions, in addition to those of Backend (row-major float32 Buffers, explicit dimensions,
// no errors, inconsistent dimensions are programming errors):
//   - Every XxxBackward op ACCUMULATES into its gradient outputs (dx += …), as llm.c does, so a
//     tensor that feeds several consumers (the residual stream, a LoRA-adapted Linear's input)
//     collects all their gradients without extra buffers. Callers Zero gradient buffers before
//     the first contribution. The two exceptions say so: CrossEntropyBackward overwrites (and
//     may run in place on the logits) and RoPEBackwardPos works in place.
//   - A gradient output that is not wanted (a frozen weight, an absent bias, the input of the
//     first layer) is passed as nil and is not computed.
//   - Gradient outputs must not overlap any input or each other, unless the op says otherwise.
//   - Positions and segment ids are host slices ([]int), like the tokens of EmbeddingForward.
type Trainer interface {
	Backend

	// Zero sets the first n elements of x to 0. x (≥ n).
	Zero(x Buffer, n int)

	// Axpy computes y += alpha·x (scaled residual adds, LoRA's s·B·A·x path, gradient
	// accumulation). y (N), x (N); y must not be x.
	Axpy(y, x Buffer, alpha float32, N int)

	// Scale computes x *= alpha over the first n elements. x (≥ n).
	Scale(x Buffer, alpha float32, n int)

	// MatMulForwardAcc adds a product to out: out += x·wᵀ. out (N, OC), x (N, C), w (OC, C).
	// (LoRA adds s·B·(A·x) to the base Linear's output this way, without a temporary.)
	MatMulForwardAcc(out, x, w Buffer, N, C, OC int)

	// ColScaleForward computes y = x·diag(c) + bias, one scale and bias per column (DoRA's
	// m/‖W0 + s·BA‖). y (N, OC), x (N, OC), c (OC), bias (OC) or nil; y may be x.
	ColScaleForward(y, x, c, bias Buffer, N, OC int)

	// ColScaleBackward computes dx = dy·diag(c) and adds dc[o] += Σ_n dy[n, o]·x[n, o].
	// dx (N, OC), dc (OC), dy (N, OC), x (N, OC), c (OC); dx may be dy.
	ColScaleBackward(dx, dc, dy, x, c Buffer, N, OC int)

	// CrossEntropyForward computes the per-row loss of a fused log-softmax and negative log
	// likelihood: losses[n] = logsumexp(logits[n, :]) − logits[n, targets[n]], and 0 for rows whose
	// target is IgnoreIndex. The caller sums or averages. losses (N), logits (N, V),
	// len(targets) = N; every other target is in [0, V).
	CrossEntropyForward(losses, logits Buffer, targets []int, N, V int)

	// CrossEntropyBackward writes (=, not +=) the gradient of scale·Σ_n losses[n] with respect to
	// the logits: dlogits[n, :] = scale·(softmax(logits[n, :]) − onehot(targets[n])), and 0 for
	// ignored rows. scale is usually 1/(number of non-ignored targets), for a mean loss.
	// dlogits (N, V), logits (N, V). dlogits may be logits (in place).
	CrossEntropyBackward(dlogits, logits Buffer, targets []int, N, V int, scale float32)

	// CrossEntropyForwardBackward is CrossEntropyForward and CrossEntropyBackward in one pass
	// over the logits (one exponential per logit instead of two): it writes losses (N) and
	// dlogits (N, V) with the same values the two ops give. dlogits may be logits. Training uses
	// it; evaluation, which needs no gradient, uses CrossEntropyForward.
	CrossEntropyForwardBackward(losses, dlogits, logits Buffer, targets []int, N, V int, scale float32)

	// MatMulBackward is the backward of MatMulForward (y = x·wᵀ + bias):
	//	dx    (N, C)  += dy · w        (nil: not computed)
	//	dw    (OC, C) += dyᵀ · x       (nil: frozen weight)
	//	dbias (OC)    += Σ_n dy[n, :]  (nil: no bias, or frozen)
	// dy (N, OC), x (N, C), w (OC, C). x may be nil when dw is nil; w may be nil when dx is nil.
	MatMulBackward(dx, dw, dbias, dy, x, w Buffer, N, C, OC int)

	// RMSNormBackward is the backward of RMSNormForward (y = x / sqrt(mean(x²)+eps) · w):
	//	dx (N, C) += ∂L/∂x   (nil: not computed)
	//	dw (C)    += ∂L/∂w   (nil: frozen weight)
	// dy (N, C), x (N, C) the forward's input, w (C).
	RMSNormBackward(dx, dw, dy, x, w Buffer, N, C int, eps float32)

	// RoPEForwardPos is RoPEForward with an explicit position per row, so that packed samples
	// restart at position 0: x[n, h, :] is rotated by the angles pos[n]·invFreq[i] (float32
	// product) in the rotate_half layout. x (N, NH, D) in place, invFreq (D/2), len(pos) = N.
	RoPEForwardPos(x, invFreq Buffer, pos []int, N, NH, D int)

	// RoPEBackwardPos is the backward of RoPEForwardPos: the transpose of a rotation is the
	// rotation by the opposite angle, applied in place to the gradient.
	// dx (N, NH, D) in place: on entry ∂L/∂(rotated x), on return ∂L/∂x. invFreq (D/2), len(pos) = N.
	RoPEBackwardPos(dx, invFreq Buffer, pos []int, N, NH, D int)

	// AttentionTrainForward computes causal grouped-query attention over whole sequences (no
	// KV cache) and saves the probabilities for the backward pass. Query t of batch element b
	// attends to the keys s ≤ t with seg[b·T+s] = seg[b·T+t] (packed samples see only
	// themselves; seg nil means one segment per batch element); query head h uses key/value head
	// h/(NH/NKV); scores are scaled by 1/sqrt(D).
	//	out (B, T, NH·D)   = Σ_s att[b, h, t, s] · v[b, s, h/(NH/NKV), :]
	//	att (B, NH, T, T)  the softmax probabilities, 0 for masked (b, h, t, s)
	// q (B, T, NH·D), k (B, T, NKV·D), v (B, T, NKV·D), seg nil or len B·T.
	AttentionTrainForward(out, att, q, k, v Buffer, seg []int, B, T, NH, NKV, D int)

	// AttentionBackward is the backward of AttentionTrainForward, given its saved att:
	//	dq (B, T, NH·D)  += ∂L/∂q
	//	dk (B, T, NKV·D) += ∂L/∂k   (summed over the NH/NKV query heads of each KV head)
	//	dv (B, T, NKV·D) += ∂L/∂v   (likewise)
	// dout (B, T, NH·D), att (B, NH, T, T), q, k, v, seg as in the forward.
	AttentionBackward(dq, dk, dv, dout, att, q, k, v Buffer, seg []int, B, T, NH, NKV, D int)

	// SwiGLUBackward is the backward of SwiGLUForward (out = silu(gate)·up):
	//	dgate (N) += dout · up · silu'(gate),  silu'(g) = σ(g)·(1 + g·(1 − σ(g)))
	//	dup   (N) += dout · silu(gate)
	// dout (N), gate (N), up (N): the forward's inputs, not its output.
	SwiGLUBackward(dgate, dup, dout, gate, up Buffer, N int)

	// EmbeddingBackward scatters the gradient of EmbeddingForward into the table (full
	// fine-tuning): dtable[tokens[n], :] += dout[n, :]. dtable (V, C), dout (N, C), N = len(tokens).
	EmbeddingBackward(dtable, dout Buffer, tokens []int, C int)
}
