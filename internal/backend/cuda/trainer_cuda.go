//go:build cuda

package cuda

import (
	"fmt"

	"github.com/loractl/loractl/internal/backend"
)

// The training ops (backend.Trainer) on the device, each the twin of the CPU backend's op with
// the same contract (backward ops add into their gradients unless the interface says otherwise).

var _ backend.Trainer = (*Backend)(nil)

// opt returns b's pointer, or 0 for a nil (not wanted) buffer, checking its size.
func opt(op, name string, b backend.Buffer, n int) Ptr {
	cb := buf(b)
	if cb == nil {
		return 0
	}
	need(op, name, cb, n)
	return cb.p
}

// Zero sets x[0:n] to 0.
func (be *Backend) Zero(x backend.Buffer, n int) {
	xs := buf(x)
	need("Zero", "x", xs, n)
	be.fail(be.ctx.Memset32(xs.p, 0, n))
}

// Axpy computes y += alpha·x.
func (be *Backend) Axpy(y, x backend.Buffer, alpha float32, N int) {
	ys, xs := buf(y), buf(x)
	need("Axpy", "y", ys, N)
	need("Axpy", "x", xs, N)
	if N > 0 {
		be.fail(be.ctx.Launch("axpy", elems(N), 256, 0, ys.p, xs.p, alpha, int64(N)))
	}
}

// Scale computes x[0:n] *= alpha.
func (be *Backend) Scale(x backend.Buffer, alpha float32, n int) {
	xs := buf(x)
	need("Scale", "x", xs, n)
	if n > 0 {
		be.fail(be.ctx.Launch("scale", elems(n), 256, 0, xs.p, alpha, int64(n)))
	}
}

// MatMulForwardAcc computes out += x·wᵀ.
func (be *Backend) MatMulForwardAcc(out, x, w backend.Buffer, N, C, OC int) {
	o, xs, ws := buf(out), buf(x), buf(w)
	need("MatMulForwardAcc", "out", o, N*OC)
	need("MatMulForwardAcc", "x", xs, N*C)
	need("MatMulForwardAcc", "w", ws, OC*C)
	if N > 0 && OC > 0 {
		be.fail(be.ctx.MatMulNT(o.p, xs.p, ws.p, N, C, OC, true))
	}
}

// crossEntropy launches the fused kernel: losses and/or dlogits (0 pointers: not computed).
func (be *Backend) crossEntropy(op string, losses, dlogits Ptr, logits *Buffer, targets []int, N, V int, scale float32) {
	need(op, "logits", logits, N*V)
	if len(targets) != N {
		panic(fmt.Sprintf("cuda: %s: %d targets for %d rows", op, len(targets), N))
	}
	for _, t := range targets {
		if t != backend.IgnoreIndex && (t < 0 || t >= V) {
			panic(fmt.Sprintf("cuda: %s: target %d out of range [0, %d) (the caller must validate targets)", op, t, V))
		}
	}
	if N == 0 {
		return
	}
	tg := be.ints(targets)
	be.fail(be.ctx.Launch("cross_entropy", N, 256, 0, losses, dlogits, logits.p, tg, int32(N), int32(V), scale))
	be.fail(be.ctx.Free(tg))
}

// CrossEntropyForward computes the per-row losses.
func (be *Backend) CrossEntropyForward(losses, logits backend.Buffer, targets []int, N, V int) {
	be.crossEntropy("CrossEntropyForward", opt("CrossEntropyForward", "losses", losses, N), 0, buf(logits), targets, N, V, 0)
}

// CrossEntropyBackward writes dlogits = scale·(softmax − onehot); dlogits may be logits.
func (be *Backend) CrossEntropyBackward(dlogits, logits backend.Buffer, targets []int, N, V int, scale float32) {
	be.crossEntropy("CrossEntropyBackward", 0, opt("CrossEntropyBackward", "dlogits", dlogits, N*V), buf(logits), targets, N, V, scale)
}

// CrossEntropyForwardBackward does both in one pass.
func (be *Backend) CrossEntropyForwardBackward(losses, dlogits, logits backend.Buffer, targets []int, N, V int, scale float32) {
	op := "CrossEntropyForwardBackward"
	be.crossEntropy(op, opt(op, "losses", losses, N), opt(op, "dlogits", dlogits, N*V), buf(logits), targets, N, V, scale)
}

// MatMulBackward: dx += dy·w, dw += dyᵀ·x, dbias += Σ_n dy (nil outputs skipped).
func (be *Backend) MatMulBackward(dx, dw, dbias, dy, x, w backend.Buffer, N, C, OC int) {
	op := "MatMulBackward"
	dys := buf(dy)
	need(op, "dy", dys, N*OC)
	if N == 0 {
		return
	}
	if p := opt(op, "dx", dx, N*C); p != 0 {
		ws := buf(w)
		need(op, "w", ws, OC*C)
		be.fail(be.ctx.MatMulNN(p, dys.p, ws.p, N, C, OC))
	}
	if p := opt(op, "dw", dw, OC*C); p != 0 {
		xs := buf(x)
		need(op, "x", xs, N*C)
		be.fail(be.ctx.MatMulTN(p, dys.p, xs.p, N, C, OC))
	}
	if p := opt(op, "dbias", dbias, OC); p != 0 {
		be.fail(be.ctx.Launch("bias_backward", (OC+255)/256, 256, 0, p, dys.p, int32(N), int32(OC)))
	}
}

// ColScaleForward computes y = x·diag(c) + bias (bias may be nil); y may be x.
func (be *Backend) ColScaleForward(y, x, c, bias backend.Buffer, N, OC int) {
	op := "ColScaleForward"
	ys, xs, cs := buf(y), buf(x), buf(c)
	need(op, "y", ys, N*OC)
	need(op, "x", xs, N*OC)
	need(op, "c", cs, OC)
	bp := opt(op, "bias", bias, OC)
	if N > 0 && OC > 0 {
		be.fail(be.ctx.Launch("col_scale", elems(N*OC), 256, 0, ys.p, xs.p, cs.p, bp, int32(N), int32(OC)))
	}
}

// ColScaleBackward computes dx = dy·diag(c) and dc += Σ_n dy ⊙ x per column; dx may be dy.
func (be *Backend) ColScaleBackward(dx, dc, dy, x, c backend.Buffer, N, OC int) {
	op := "ColScaleBackward"
	dxs, dcs, dys, xs, cs := buf(dx), buf(dc), buf(dy), buf(x), buf(c)
	need(op, "dx", dxs, N*OC)
	need(op, "dc", dcs, OC)
	need(op, "dy", dys, N*OC)
	need(op, "x", xs, N*OC)
	need(op, "c", cs, OC)
	if N > 0 && OC > 0 {
		be.fail(be.ctx.Launch("col_scale_backward", (OC+255)/256, 256, 0, dxs.p, dcs.p, dys.p, xs.p, cs.p, int32(N), int32(OC)))
	}
}

// RMSNormBackward: dx += ∂L/∂x and dw += ∂L/∂w (nil skipped).
func (be *Backend) RMSNormBackward(dx, dw, dy, x, w backend.Buffer, N, C int, eps float32) {
	op := "RMSNormBackward"
	dys, xs, ws := buf(dy), buf(x), buf(w)
	need(op, "dy", dys, N*C)
	need(op, "x", xs, N*C)
	need(op, "w", ws, C)
	pdx, pdw := opt(op, "dx", dx, N*C), opt(op, "dw", dw, C)
	if N == 0 {
		return
	}
	r, err := be.ctx.Alloc(4 * N) // (N) rstd of every row
	if err != nil {
		be.fail(err)
		return
	}
	be.fail(be.ctx.Launch("rmsnorm_backward_rows", N, 256, 0, pdx, r, dys.p, xs.p, ws.p, int32(N), int32(C), eps))
	if pdw != 0 {
		be.fail(be.ctx.Launch("rmsnorm_backward_dw", (C+255)/256, 256, 0, pdw, dys.p, xs.p, r, int32(N), int32(C)))
	}
	be.fail(be.ctx.Free(r))
}

func (be *Backend) ropePos(op string, x, invFreq backend.Buffer, pos []int, N, NH, D int, sign float32) {
	xs, inv := buf(x), buf(invFreq)
	need(op, "x", xs, N*NH*D)
	need(op, "invFreq", inv, D/2)
	if len(pos) != N {
		panic(fmt.Sprintf("cuda: %s: %d positions for %d rows", op, len(pos), N))
	}
	if N == 0 {
		return
	}
	pp := be.ints(pos)
	be.fail(be.ctx.Launch("rope_pos", elems(N*NH*D/2), 256, 0, xs.p, inv.p, pp, int32(N), int32(NH), int32(D), sign))
	be.fail(be.ctx.Free(pp))
}

// RoPEForwardPos rotates x in place, row n at position pos[n].
func (be *Backend) RoPEForwardPos(x, invFreq backend.Buffer, pos []int, N, NH, D int) {
	be.ropePos("RoPEForwardPos", x, invFreq, pos, N, NH, D, 1)
}

// RoPEBackwardPos rotates the gradient back in place.
func (be *Backend) RoPEBackwardPos(dx, invFreq backend.Buffer, pos []int, N, NH, D int) {
	be.ropePos("RoPEBackwardPos", dx, invFreq, pos, N, NH, D, -1)
}

// segs uploads segment ids (nil: 0, no mask beyond causality).
func (be *Backend) segs(op string, seg []int, B, T, NH, NKV int) Ptr {
	if NKV <= 0 || NH%NKV != 0 {
		panic(fmt.Sprintf("cuda: %s: NKV=%d must divide NH=%d", op, NKV, NH))
	}
	if seg == nil {
		return 0
	}
	if len(seg) != B*T {
		panic(fmt.Sprintf("cuda: %s: %d segment ids for B·T = %d tokens", op, len(seg), B*T))
	}
	return be.ints(seg)
}

// AttentionTrainForward: causal, segment-masked GQA over whole sequences, saving att.
func (be *Backend) AttentionTrainForward(out, att, q, k, v backend.Buffer, seg []int, B, T, NH, NKV, D int) {
	op := "AttentionTrainForward"
	o, as, qs, ks, vs := buf(out), buf(att), buf(q), buf(k), buf(v)
	need(op, "out", o, B*T*NH*D)
	need(op, "att", as, B*NH*T*T)
	need(op, "q", qs, B*T*NH*D)
	need(op, "k", ks, B*T*NKV*D)
	need(op, "v", vs, B*T*NKV*D)
	sp := be.segs(op, seg, B, T, NH, NKV)
	if B*NH*T > 0 {
		be.fail(be.ctx.Launch("attention_train_forward", B*NH*T, 128, 0, o.p, as.p, qs.p, ks.p, vs.p, sp,
			int32(B), int32(T), int32(NH), int32(NKV), int32(D)))
	}
	if sp != 0 {
		be.fail(be.ctx.Free(sp))
	}
}

// AttentionBackward: dq, dk, dv += the gradients (nil skipped), from the saved att.
func (be *Backend) AttentionBackward(dq, dk, dv, dout, att, q, k, v backend.Buffer, seg []int, B, T, NH, NKV, D int) {
	op := "AttentionBackward"
	dos, as, qs, ks, vs := buf(dout), buf(att), buf(q), buf(k), buf(v)
	need(op, "dout", dos, B*T*NH*D)
	need(op, "att", as, B*NH*T*T)
	need(op, "q", qs, B*T*NH*D)
	need(op, "k", ks, B*T*NKV*D)
	need(op, "v", vs, B*T*NKV*D)
	pdq, pdk, pdv := opt(op, "dq", dq, B*T*NH*D), opt(op, "dk", dk, B*T*NKV*D), opt(op, "dv", dv, B*T*NKV*D)
	if sp := be.segs(op, seg, B, T, NH, NKV); sp != 0 { // checked only: masked att is 0, so is dS
		be.fail(be.ctx.Free(sp))
	}
	if B*NH*T == 0 {
		return
	}
	dS, err := be.ctx.Alloc(4 * B * NH * T * T) // (B, NH, T, T)
	if err != nil {
		be.fail(err)
		return
	}
	be.fail(be.ctx.Launch("attention_backward_q", B*NH*T, 128, 0, pdq, dS, dos.p, as.p, ks.p, vs.p,
		int32(B), int32(T), int32(NH), int32(NKV), int32(D)))
	if pdk != 0 || pdv != 0 {
		be.fail(be.ctx.Launch("attention_backward_kv", B*NKV*T, 64, 0, pdk, pdv, dS, as.p, qs.p, dos.p,
			int32(B), int32(T), int32(NH), int32(NKV), int32(D)))
	}
	be.fail(be.ctx.Free(dS))
}

// SwiGLUBackward: dgate += dout·up·silu'(gate), dup += dout·silu(gate) (nil skipped).
func (be *Backend) SwiGLUBackward(dgate, dup, dout, gate, up backend.Buffer, N int) {
	op := "SwiGLUBackward"
	dos, g, u := buf(dout), buf(gate), buf(up)
	need(op, "dout", dos, N)
	need(op, "gate", g, N)
	need(op, "up", u, N)
	pdg, pdu := opt(op, "dgate", dgate, N), opt(op, "dup", dup, N)
	if N > 0 && (pdg != 0 || pdu != 0) {
		be.fail(be.ctx.Launch("swiglu_backward", elems(N), 256, 0, pdg, pdu, dos.p, g.p, u.p, int64(N)))
	}
}

// EmbeddingBackward: dtable[tokens[n], :] += dout[n, :], tokens in order.
func (be *Backend) EmbeddingBackward(dtable, dout backend.Buffer, tokens []int, C int) {
	op := "EmbeddingBackward"
	dt, do := buf(dtable), buf(dout)
	N := len(tokens)
	need(op, "dout", do, N*C)
	V := dt.n / max(C, 1)
	for _, id := range tokens {
		if id < 0 || id >= V {
			panic("cuda: EmbeddingBackward: token id out of range (the caller must validate tokens)")
		}
	}
	if N == 0 {
		return
	}
	ids := be.ints(tokens)
	be.fail(be.ctx.Launch("embedding_backward", (C+255)/256, 256, 0, dt.p, do.p, ids, int32(N), int32(C)))
	be.fail(be.ctx.Free(ids))
}

// Flash-style attention (kernels/flash.cu): tiles of 32 keys with an online softmax, only the
// per-row logsumexp saved, the scores recomputed tile by tile in the backward.

var _ backend.FlashAttention = (*Backend)(nil)

// flashMaxD is the largest head dimension the flash kernels take (FA_DMAX in flash.cu).
const flashMaxD = 128

// The rows per block of each flash kernel (FWD_BQ, DQ_BQ, KV_BK in flash.cu); each runs with
// flashThreads threads.
const (
	flashFwdRows = 16
	flashDQRows  = 8
	flashKVRows  = 8
	flashThreads = 128
)

// FlashAttentionFits reports whether the flash kernels take head dimension D.
func (be *Backend) FlashAttentionFits(D int) bool { return D > 0 && D <= flashMaxD }

func flashCheck(op string, D int) {
	if D <= 0 || D > flashMaxD {
		panic(fmt.Sprintf("cuda: %s: head dimension %d, the flash kernels take 1..%d (see FlashAttentionFits)", op, D, flashMaxD))
	}
}

// flashGrid is the grid of a flash kernel: a block per (batch, head) and tile of rows.
func flashGrid(B, heads, T, rows int) int { return B * heads * ((T + rows - 1) / rows) }

// AttentionTrainForwardLSE: causal, segment-masked GQA saving the logsumexp (B, NH, T).
func (be *Backend) AttentionTrainForwardLSE(out, lse, q, k, v backend.Buffer, seg []int, B, T, NH, NKV, D int) {
	op := "AttentionTrainForwardLSE"
	o, ls, qs, ks, vs := buf(out), buf(lse), buf(q), buf(k), buf(v)
	need(op, "out", o, B*T*NH*D)
	need(op, "lse", ls, B*NH*T)
	need(op, "q", qs, B*T*NH*D)
	need(op, "k", ks, B*T*NKV*D)
	need(op, "v", vs, B*T*NKV*D)
	flashCheck(op, D)
	sp := be.segs(op, seg, B, T, NH, NKV)
	if B*NH*T > 0 {
		be.fail(be.ctx.Launch("flash_attention_forward", flashGrid(B, NH, T, flashFwdRows), flashThreads, 0, o.p, ls.p, qs.p, ks.p, vs.p, sp,
			int32(B), int32(T), int32(NH), int32(NKV), int32(D)))
	}
	if sp != 0 {
		be.fail(be.ctx.Free(sp))
	}
}

// AttentionBackwardLSE: dq, dk, dv += the gradients (nil skipped), recomputed from q, k and lse.
func (be *Backend) AttentionBackwardLSE(dq, dk, dv, dout, out, lse, q, k, v backend.Buffer, seg []int, B, T, NH, NKV, D int) {
	op := "AttentionBackwardLSE"
	dos, ob, ls, qs, ks, vs := buf(dout), buf(out), buf(lse), buf(q), buf(k), buf(v)
	need(op, "dout", dos, B*T*NH*D)
	need(op, "out", ob, B*T*NH*D)
	need(op, "lse", ls, B*NH*T)
	need(op, "q", qs, B*T*NH*D)
	need(op, "k", ks, B*T*NKV*D)
	need(op, "v", vs, B*T*NKV*D)
	pdq, pdk, pdv := opt(op, "dq", dq, B*T*NH*D), opt(op, "dk", dk, B*T*NKV*D), opt(op, "dv", dv, B*T*NKV*D)
	flashCheck(op, D)
	sp := be.segs(op, seg, B, T, NH, NKV)
	if B*NH*T > 0 && (pdq != 0 || pdk != 0 || pdv != 0) {
		di, err := be.ctx.Alloc(4 * B * NH * T) // (B, NH, T) Σ_d dout·out of every row
		if err != nil {
			be.fail(err)
		} else {
			be.fail(be.ctx.Launch("flash_attention_backward_q", flashGrid(B, NH, T, flashDQRows), flashThreads, 0, pdq, di, dos.p, ob.p, ls.p,
				qs.p, ks.p, vs.p, sp, int32(B), int32(T), int32(NH), int32(NKV), int32(D)))
			if pdk != 0 || pdv != 0 {
				be.fail(be.ctx.Launch("flash_attention_backward_kv", flashGrid(B, NKV, T, flashKVRows), flashThreads, 0, pdk, pdv, dos.p, ls.p, di,
					qs.p, ks.p, vs.p, sp, int32(B), int32(T), int32(NH), int32(NKV), int32(D)))
			}
			be.fail(be.ctx.Free(di))
		}
	}
	if sp != 0 {
		be.fail(be.ctx.Free(sp))
	}
}
