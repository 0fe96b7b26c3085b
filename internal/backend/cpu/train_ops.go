package cpu

import (
	"fmt"
	"math"

	"github.com/loractl/loractl/internal/backend"
)

// This file holds the training ops of the CPU backend (backend.Trainer): the forward ops that
// save what backward needs, and the backward ops. Every gradient output accumulates (+=) except
// where a comment says otherwise. Work is split over disjoint output rows, so every output
// element is summed by one goroutine in a fixed order and results do not depend on the number
// of threads (a fixed seed gives a bitwise-identical adapter).

var _ backend.Trainer = (*Backend)(nil)

// Zero sets x[0:n] to 0.
func (be *Backend) Zero(x backend.Buffer, n int) {
	xs := data(x)
	need("Zero", "x", xs, n)
	clear(xs[:n])
}

// Axpy computes y += alpha·x. y (N), x (N).
func (be *Backend) Axpy(y, x backend.Buffer, alpha float32, N int) {
	ys, xs := data(y), data(x)
	need("Axpy", "y", ys, N)
	need("Axpy", "x", xs, N)
	ys, xs = ys[:N], xs[:N]
	for i := range ys {
		ys[i] += alpha * xs[i]
	}
}

// checkTargets panics unless every target is IgnoreIndex or in [0, V).
func checkTargets(op string, targets []int, N, V int) {
	if len(targets) != N {
		panic(fmt.Sprintf("cpu: %s: %d targets for %d rows", op, len(targets), N))
	}
	for _, t := range targets {
		if t != backend.IgnoreIndex && (t < 0 || t >= V) {
			panic(fmt.Sprintf("cpu: %s: target %d out of range [0, %d) (the caller must validate targets)", op, t, V))
		}
	}
}

// rowLogSumExp returns the maximum of row and log Σ exp(row − max), in float64.
func rowLogSumExp(row []float32) (maxv float32, logSum float64) {
	maxv = float32(math.Inf(-1))
	for _, v := range row {
		maxv = max(maxv, v)
	}
	var sum float64
	for _, v := range row {
		sum += math.Exp(float64(v - maxv))
	}
	return maxv, math.Log(sum)
}

// CrossEntropyForward computes losses[n] = logsumexp(logits[n, :]) − logits[n, targets[n]] (in
// float64, rounded), 0 for ignored rows. losses (N), logits (N, V).
func (be *Backend) CrossEntropyForward(losses, logits backend.Buffer, targets []int, N, V int) {
	ls, lg := data(losses), data(logits)
	need("CrossEntropyForward", "losses", ls, N)
	need("CrossEntropyForward", "logits", lg, N*V)
	checkTargets("CrossEntropyForward", targets, N, V)
	parallelFor(N, 1, be.workers(N*V*8), func(lo, hi int) {
		for n := lo; n < hi; n++ {
			if targets[n] == backend.IgnoreIndex {
				ls[n] = 0
				continue
			}
			row := lg[n*V : (n+1)*V] // (V,)
			maxv, logSum := rowLogSumExp(row)
			ls[n] = float32(logSum + float64(maxv-row[targets[n]]))
		}
	})
}

// CrossEntropyBackward writes dlogits[n, :] = scale·(softmax(logits[n, :]) − onehot(targets[n])),
// 0 for ignored rows. dlogits (N, V), logits (N, V); dlogits may be logits.
func (be *Backend) CrossEntropyBackward(dlogits, logits backend.Buffer, targets []int, N, V int, scale float32) {
	dl, lg := data(dlogits), data(logits)
	need("CrossEntropyBackward", "dlogits", dl, N*V)
	need("CrossEntropyBackward", "logits", lg, N*V)
	checkTargets("CrossEntropyBackward", targets, N, V)
	parallelFor(N, 1, be.workers(N*V*8), func(lo, hi int) {
		for n := lo; n < hi; n++ {
			drow := dl[n*V : (n+1)*V] // (V,)
			if targets[n] == backend.IgnoreIndex {
				clear(drow)
				continue
			}
			row := lg[n*V : (n+1)*V] // (V,) read fully before drow is written (they may alias)
			maxv, logSum := rowLogSumExp(row)
			for i, v := range row {
				p := math.Exp(float64(v-maxv) - logSum)
				drow[i] = scale * float32(p)
			}
			drow[targets[n]] -= scale
		}
	})
}

// MatMulBackward computes, for y = x·wᵀ + bias,
// dx (N, C) += dy·w, dw (OC, C) += dyᵀ·x, dbias (OC) += Σ_n dy[n, :]; nil outputs are skipped.
// dy (N, OC), x (N, C), w (OC, C).
func (be *Backend) MatMulBackward(dx, dw, dbias, dy, x, w backend.Buffer, N, C, OC int) {
	dxs, dws, dbs, dys := data(dx), data(dw), data(dbias), data(dy)
	need("MatMulBackward", "dy", dys, N*OC)
	if dxs != nil {
		ws := data(w)
		need("MatMulBackward", "dx", dxs, N*C)
		need("MatMulBackward", "w", ws, OC*C)
		// dx[n, :] += Σ_o dy[n, o]·w[o, :], split over token rows.
		parallelFor(N, 1, be.workers(N*C*OC), func(lo, hi int) {
			for n := lo; n < hi; n++ {
				axpyRows(dxs[n*C:(n+1)*C], ws[:OC*C], dys[n*OC:(n+1)*OC], 1, C)
			}
		})
	}
	if dws != nil {
		xs := data(x)
		need("MatMulBackward", "dw", dws, OC*C)
		need("MatMulBackward", "x", xs, N*C)
		// dw[o, :] += Σ_n dy[n, o]·x[n, :], split over weight rows.
		parallelFor(OC, 1, be.workers(N*C*OC), func(lo, hi int) {
			for o := lo; o < hi; o++ {
				axpyRows(dws[o*C:(o+1)*C], xs[:N*C], dys[o:], OC, C)
			}
		})
	}
	if dbs != nil {
		need("MatMulBackward", "dbias", dbs, OC)
		for n := 0; n < N; n++ {
			dyr := dys[n*OC : (n+1)*OC] // (OC,)
			for o, g := range dyr {
				dbs[o] += g
			}
		}
	}
}

// axpyRows computes dst += Σ_j coef[j·stride]·rows[j, :] for j = 0..len(rows)/C−1 in order,
// four rows at a time so that dst is loaded and stored once per four rows.
// dst (C), rows (J, C), coef (≥ (J−1)·stride+1).
func axpyRows(dst, rows, coef []float32, stride, C int) {
	if C == 0 {
		return
	}
	dst = dst[:C]
	J := len(rows) / C
	j := 0
	for ; j+4 <= J; j += 4 {
		a0, a1, a2, a3 := coef[j*stride], coef[(j+1)*stride], coef[(j+2)*stride], coef[(j+3)*stride]
		r0 := rows[(j+0)*C : (j+1)*C] // (C,)
		r1 := rows[(j+1)*C : (j+2)*C] // (C,)
		r2 := rows[(j+2)*C : (j+3)*C] // (C,)
		r3 := rows[(j+3)*C : (j+4)*C] // (C,)
		for c := range dst {
			dst[c] += a0*r0[c] + a1*r1[c] + a2*r2[c] + a3*r3[c]
		}
	}
	for ; j < J; j++ {
		a := coef[j*stride]
		r := rows[j*C : (j+1)*C] // (C,)
		for c := range dst {
			dst[c] += a * r[c]
		}
	}
}

// RMSNormBackward computes, for y = w·x·r with r = 1/sqrt(mean(x²)+eps) per row,
//
//	dx[i] += r·w[i]·dy[i] − x[i]·r³/C · Σ_j w[j]·dy[j]·x[j]
//	dw[i] += Σ_n dy[n, i]·x[n, i]·r_n
//
// dx (N, C) or nil, dw (C) or nil, dy (N, C), x (N, C), w (C). Row sums are in float64.
func (be *Backend) RMSNormBackward(dx, dw, dy, x, w backend.Buffer, N, C int, eps float32) {
	dxs, dws, dys, xs, ws := data(dx), data(dw), data(dy), data(x), data(w)
	need("RMSNormBackward", "dy", dys, N*C)
	need("RMSNormBackward", "x", xs, N*C)
	need("RMSNormBackward", "w", ws, C)
	if dxs != nil {
		need("RMSNormBackward", "dx", dxs, N*C)
	}
	if dws != nil {
		need("RMSNormBackward", "dw", dws, C)
	}
	ws = ws[:C]
	for n := 0; n < N; n++ {
		xr := xs[n*C : (n+1)*C]   // (C,)
		dyr := dys[n*C : (n+1)*C] // (C,)
		var ss, dot float64
		for i, v := range xr {
			ss += float64(v) * float64(v)
			dot += float64(ws[i]) * float64(dyr[i]) * float64(v)
		}
		r := 1 / math.Sqrt(ss/float64(C)+float64(eps))
		if dxs != nil {
			dxr := dxs[n*C : (n+1)*C] // (C,)
			k := float32(r * r * r * dot / float64(C))
			rf := float32(r)
			for i, v := range xr {
				dxr[i] += rf*ws[i]*dyr[i] - k*v
			}
		}
		if dws != nil {
			rf := float32(r)
			for i, v := range xr {
				dws[i] += dyr[i] * v * rf
			}
		}
	}
}

// RoPEForwardPos rotates x (N, NH, D) in place; row n is at position pos[n]. invFreq (D/2).
// The angle is float32(pos)·invFreq[i] as in RoPEForward.
func (be *Backend) RoPEForwardPos(x, invFreq backend.Buffer, pos []int, N, NH, D int) {
	ropePos("RoPEForwardPos", data(x), data(invFreq), pos, N, NH, D, 1)
}

// RoPEBackwardPos rotates the gradient dx (N, NH, D) in place by the opposite angles.
func (be *Backend) RoPEBackwardPos(dx, invFreq backend.Buffer, pos []int, N, NH, D int) {
	ropePos("RoPEBackwardPos", data(dx), data(invFreq), pos, N, NH, D, -1)
}

// ropePos rotates every head of row n of xs (N, NH, D) by sign·pos[n]·invFreq[i].
func ropePos(op string, xs, inv []float32, pos []int, N, NH, D int, sign float32) {
	half := D / 2
	need(op, "x", xs, N*NH*D)
	need(op, "invFreq", inv, half)
	if len(pos) != N {
		panic(fmt.Sprintf("cpu: %s: %d positions for %d rows", op, len(pos), N))
	}
	for n := 0; n < N; n++ {
		p := float32(pos[n])
		row := xs[n*NH*D : (n+1)*NH*D] // (NH, D)
		for i := 0; i < half; i++ {
			theta := float64(p * inv[i])
			c, s := float32(math.Cos(theta)), sign*float32(math.Sin(theta))
			for h := 0; h < NH; h++ {
				x0, x1 := row[h*D+i], row[h*D+i+half]
				row[h*D+i] = x0*c - x1*s
				row[h*D+i+half] = x1*c + x0*s
			}
		}
	}
}

// attnCheck validates the arguments shared by AttentionTrainForward and AttentionBackward.
func attnCheck(op string, seg []int, B, T, NH, NKV int) {
	if NKV <= 0 || NH%NKV != 0 {
		panic(fmt.Sprintf("cpu: %s: NKV=%d must divide NH=%d", op, NKV, NH))
	}
	if seg != nil && len(seg) != B*T {
		panic(fmt.Sprintf("cpu: %s: %d segment ids for B·T = %d tokens", op, len(seg), B*T))
	}
}

// visible reports whether query t of batch element b may attend to key s: s ≤ t and, when
// seg is not nil, both tokens are in the same segment.
func visible(seg []int, b, T, t, s int) bool {
	return s <= t && (seg == nil || seg[b*T+s] == seg[b*T+t])
}

// AttentionTrainForward computes causal, segment-masked GQA attention over whole sequences and
// saves the probabilities. out (B, T, NH·D), att (B, NH, T, T), q (B, T, NH·D),
// k (B, T, NKV·D), v (B, T, NKV·D), seg nil or (B·T). Scores and the output are accumulated in
// float32, the softmax's exponentials and their sum in float64, as in AttentionForward.
func (be *Backend) AttentionTrainForward(out, att, q, k, v backend.Buffer, seg []int, B, T, NH, NKV, D int) {
	o, as, qs, ks, vs := data(out), data(att), data(q), data(k), data(v)
	need("AttentionTrainForward", "out", o, B*T*NH*D)
	need("AttentionTrainForward", "att", as, B*NH*T*T)
	need("AttentionTrainForward", "q", qs, B*T*NH*D)
	need("AttentionTrainForward", "k", ks, B*T*NKV*D)
	need("AttentionTrainForward", "v", vs, B*T*NKV*D)
	attnCheck("AttentionTrainForward", seg, B, T, NH, NKV)
	groups := NH / NKV
	scale := float32(1 / math.Sqrt(float64(D)))
	parallelFor(B*NH, 1, be.workers(B*NH*T*T*D), func(lo, hi int) {
		for bh := lo; bh < hi; bh++ {
			b, h := bh/NH, bh%NH
			kh := h / groups
			for t := 0; t < T; t++ {
				qv := qs[(b*T+t)*NH*D+h*D : (b*T+t)*NH*D+(h+1)*D] // (D,)
				ov := o[(b*T+t)*NH*D+h*D : (b*T+t)*NH*D+(h+1)*D]  // (D,)
				ar := as[(bh*T+t)*T : (bh*T+t+1)*T]               // (T,) scores, then probabilities
				maxv := float32(math.Inf(-1))
				for s := 0; s < T; s++ {
					if !visible(seg, b, T, t, s) {
						continue
					}
					kv := ks[(b*T+s)*NKV*D+kh*D : (b*T+s)*NKV*D+(kh+1)*D] // (D,)
					ar[s] = dot1(qv, kv) * scale
					maxv = max(maxv, ar[s])
				}
				var sum float64
				for s := 0; s < T; s++ {
					if !visible(seg, b, T, t, s) {
						ar[s] = 0
						continue
					}
					e := math.Exp(float64(ar[s] - maxv))
					ar[s] = float32(e)
					sum += e
				}
				inv := float32(1 / sum)
				clear(ov)
				for s := 0; s <= t; s++ {
					if ar[s] == 0 {
						continue // masked (or underflowed: contributes nothing)
					}
					ar[s] *= inv
					p := ar[s]
					vv := vs[(b*T+s)*NKV*D+kh*D : (b*T+s)*NKV*D+(kh+1)*D] // (D,)
					for d, x := range vv {
						ov[d] += p * x
					}
				}
			}
		}
	})
}

// AttentionBackward computes the gradients of AttentionTrainForward from its saved att:
// with dp_s = dout·v_s and ds_s = att_s·(dp_s − Σ_s' att_s'·dp_s'),
// dq_t += ds_s·k_s/sqrt(D), dk_s += ds_s·q_t/sqrt(D), dv_s += att_s·dout_t (all +=).
// dq (B, T, NH·D), dk (B, T, NKV·D), dv (B, T, NKV·D) or nil each; dout (B, T, NH·D),
// att (B, NH, T, T), q (B, T, NH·D), k (B, T, NKV·D), v (B, T, NKV·D), seg nil or (B·T).
// The work is split over (batch, KV head) pairs, so that the query heads that share a key/value
// head add into dk and dv on one goroutine, in head order.
func (be *Backend) AttentionBackward(dq, dk, dv, dout, att, q, k, v backend.Buffer, seg []int, B, T, NH, NKV, D int) {
	dqs, dks, dvs := data(dq), data(dk), data(dv)
	dos, as, qs, ks, vs := data(dout), data(att), data(q), data(k), data(v)
	need("AttentionBackward", "dout", dos, B*T*NH*D)
	need("AttentionBackward", "att", as, B*NH*T*T)
	need("AttentionBackward", "q", qs, B*T*NH*D)
	need("AttentionBackward", "k", ks, B*T*NKV*D)
	need("AttentionBackward", "v", vs, B*T*NKV*D)
	if dqs != nil {
		need("AttentionBackward", "dq", dqs, B*T*NH*D)
	}
	if dks != nil {
		need("AttentionBackward", "dk", dks, B*T*NKV*D)
	}
	if dvs != nil {
		need("AttentionBackward", "dv", dvs, B*T*NKV*D)
	}
	attnCheck("AttentionBackward", seg, B, T, NH, NKV)
	groups := NH / NKV
	scale := float32(1 / math.Sqrt(float64(D)))
	parallelFor(B*NKV, 1, be.workers(2*B*NH*T*T*D), func(lo, hi int) {
		ds := make([]float32, T) // (T,) score gradients of one query row
		for bk := lo; bk < hi; bk++ {
			b, kh := bk/NKV, bk%NKV
			for h := kh * groups; h < (kh+1)*groups; h++ {
				for t := 0; t < T; t++ {
					qo := (b*T+t)*NH*D + h*D
					qv := qs[qo : qo+D]                             // (D,)
					gv := dos[qo : qo+D]                            // (D,) dout
					ar := as[((b*NH+h)*T+t)*T : ((b*NH+h)*T+t+1)*T] // (T,)
					// dp_s = dout·v_s; ds_s = p_s·(dp_s − Σ p·dp)
					var pdp float32
					for s := 0; s <= t; s++ {
						ds[s] = 0
						if !visible(seg, b, T, t, s) {
							continue
						}
						vv := vs[(b*T+s)*NKV*D+kh*D : (b*T+s)*NKV*D+(kh+1)*D] // (D,)
						ds[s] = dot1(gv, vv)
						pdp += ar[s] * ds[s]
					}
					for s := 0; s <= t; s++ {
						if !visible(seg, b, T, t, s) {
							continue
						}
						ko := (b*T+s)*NKV*D + kh*D
						p := ar[s]
						g := p * (ds[s] - pdp) * scale // ∂L/∂(q·k) including the 1/sqrt(D)
						if dqs != nil {
							kv := ks[ko : ko+D]   // (D,)
							dqv := dqs[qo : qo+D] // (D,)
							for d, x := range kv {
								dqv[d] += g * x
							}
						}
						if dks != nil {
							dkv := dks[ko : ko+D] // (D,)
							for d, x := range qv {
								dkv[d] += g * x
							}
						}
						if dvs != nil {
							dvv := dvs[ko : ko+D] // (D,)
							for d, x := range gv {
								dvv[d] += p * x
							}
						}
					}
				}
			}
		}
	})
}

// SwiGLUBackward computes dgate += dout·up·silu'(gate) and dup += dout·silu(gate), with the
// sigmoid in float64. dgate (N) or nil, dup (N) or nil, dout (N), gate (N), up (N).
func (be *Backend) SwiGLUBackward(dgate, dup, dout, gate, up backend.Buffer, N int) {
	dg, du, do, g, u := data(dgate), data(dup), data(dout), data(gate), data(up)
	need("SwiGLUBackward", "dout", do, N)
	need("SwiGLUBackward", "gate", g, N)
	need("SwiGLUBackward", "up", u, N)
	if dg != nil {
		need("SwiGLUBackward", "dgate", dg, N)
	}
	if du != nil {
		need("SwiGLUBackward", "dup", du, N)
	}
	for i := 0; i < N; i++ {
		gi := float64(g[i])
		sig := 1 / (1 + math.Exp(-gi))
		if dg != nil {
			dg[i] += do[i] * u[i] * float32(sig*(1+gi*(1-sig)))
		}
		if du != nil {
			du[i] += do[i] * float32(gi*sig)
		}
	}
}

// EmbeddingBackward computes dtable[tokens[n], :] += dout[n, :] in token order.
// dtable (V, C), dout (N, C), N = len(tokens).
func (be *Backend) EmbeddingBackward(dtable, dout backend.Buffer, tokens []int, C int) {
	dt, do := data(dtable), data(dout)
	N := len(tokens)
	need("EmbeddingBackward", "dout", do, N*C)
	V := 0
	if C > 0 {
		V = len(dt) / C
	}
	for n, id := range tokens {
		if id < 0 || id >= V {
			panic("cpu: EmbeddingBackward: token id out of range (the caller must validate tokens)")
		}
		dr := dt[id*C : (id+1)*C] // (C,)
		for c, g := range do[n*C : (n+1)*C] {
			dr[c] += g
		}
	}
}
