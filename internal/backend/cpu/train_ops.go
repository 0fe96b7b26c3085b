package cpu

import (
	"fmt"
	"math"

	"github.com/loractl/loractl/internal/backend"
	"github.com/loractl/loractl/internal/backend/cpu/gemm"
	"github.com/loractl/loractl/internal/backend/cpu/vec"
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
	t := zeroArgs.get()
	t.x = xs[:n]
	forRange(n, elemAlign, be.workers(n/8), t)
	zeroArgs.put(t)
}

// zeroBody is Zero's loop body.
type zeroBody struct{ x []float32 }

var zeroArgs argPool[zeroBody]

func (a *zeroBody) run(lo, hi int) { clear(a.x[lo:hi]) }

// Axpy computes y += alpha·x. y (N), x (N).
func (be *Backend) Axpy(y, x backend.Buffer, alpha float32, N int) {
	ys, xs := data(y), data(x)
	need("Axpy", "y", ys, N)
	need("Axpy", "x", xs, N)
	t := axpyArgs.get()
	*t = axpyBody{y: ys[:N], x: xs[:N], alpha: alpha}
	forRange(N, elemAlign, be.workers(N), t)
	axpyArgs.put(t)
}

// axpyBody is Axpy's elementwise loop body.
type axpyBody struct {
	y, x  []float32 // (N) each
	alpha float32
}

var axpyArgs argPool[axpyBody]

func (a *axpyBody) run(lo, hi int) {
	vec.Axpy(a.y[lo:hi], a.x[lo:hi], a.alpha)
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

// CrossEntropyForward computes losses[n] = logsumexp(logits[n, :]) − logits[n, targets[n]], 0
// for ignored rows. losses (N), logits (N, V). The row's exponentials are summed in float64
// (vec.ExpSum); the loss is formed in float64 and rounded.
func (be *Backend) CrossEntropyForward(losses, logits backend.Buffer, targets []int, N, V int) {
	ls, lg := data(losses), data(logits)
	need("CrossEntropyForward", "losses", ls, N)
	need("CrossEntropyForward", "logits", lg, N*V)
	checkTargets("CrossEntropyForward", targets, N, V)
	be.crossEntropy(ls, nil, lg, targets, N, V, 0)
}

// CrossEntropyBackward writes dlogits[n, :] = scale·(softmax(logits[n, :]) − onehot(targets[n])),
// 0 for ignored rows. dlogits (N, V), logits (N, V); dlogits may be logits.
func (be *Backend) CrossEntropyBackward(dlogits, logits backend.Buffer, targets []int, N, V int, scale float32) {
	dl, lg := data(dlogits), data(logits)
	need("CrossEntropyBackward", "dlogits", dl, N*V)
	need("CrossEntropyBackward", "logits", lg, N*V)
	checkTargets("CrossEntropyBackward", targets, N, V)
	be.crossEntropy(nil, dl, lg, targets, N, V, scale)
}

// CrossEntropyForwardBackward does both in one pass over each row, one exponential per logit:
// losses (N) as CrossEntropyForward (bitwise), dlogits (N, V) as CrossEntropyBackward
// (bitwise). dlogits may be logits.
func (be *Backend) CrossEntropyForwardBackward(losses, dlogits, logits backend.Buffer, targets []int, N, V int, scale float32) {
	ls, dl, lg := data(losses), data(dlogits), data(logits)
	need("CrossEntropyForwardBackward", "losses", ls, N)
	need("CrossEntropyForwardBackward", "dlogits", dl, N*V)
	need("CrossEntropyForwardBackward", "logits", lg, N*V)
	checkTargets("CrossEntropyForwardBackward", targets, N, V)
	be.crossEntropy(ls, dl, lg, targets, N, V, scale)
}

// crossEntropy runs the rows of the three cross-entropy ops: losses when ls is not nil,
// dlogits when dl is not nil.
func (be *Backend) crossEntropy(ls, dl, lg []float32, targets []int, N, V int, scale float32) {
	t := ceArgs.get()
	*t = ceBody{losses: ls, dlogits: dl, logits: lg, targets: targets, V: V, scale: scale}
	forRange(N, 1, be.workers(N*V*4), t)
	ceArgs.put(t)
}

// ceBody is the loop body over rows of the cross-entropy ops.
type ceBody struct {
	losses, dlogits, logits []float32 // (N) or nil, (N, V) or nil, (N, V)
	targets                 []int     // (N)
	V                       int
	scale                   float32
}

var ceArgs argPool[ceBody]

func (a *ceBody) run(lo, hi int) {
	V := a.V
	var e []float32 // (V,) exp(logit − max) when there is no dlogits row to hold it
	if a.dlogits == nil {
		ep := getF32(V)
		defer putF32(ep)
		e = *ep
	}
	for n := lo; n < hi; n++ {
		tg := a.targets[n]
		if tg == backend.IgnoreIndex {
			if a.losses != nil {
				a.losses[n] = 0
			}
			if a.dlogits != nil {
				clear(a.dlogits[n*V : (n+1)*V])
			}
			continue
		}
		row := a.logits[n*V : (n+1)*V] // (V,)
		lt := row[tg]                  // read before dlogits (which may be row) is written
		if a.dlogits != nil {
			e = a.dlogits[n*V : (n+1)*V]
		}
		maxv := vec.Max(row)
		sum := vec.ExpSum(e, row, maxv, 1)
		if a.losses != nil {
			a.losses[n] = float32(math.Log(sum) + float64(maxv-lt))
		}
		if a.dlogits != nil {
			vec.Scale(e, float32(float64(a.scale)/sum))
			e[tg] -= a.scale
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
	rp := getF32(N)
	t := rmsBwdArgs.get()
	*t = rmsBwd{dx: dxs, dy: dys, x: xs, w: ws[:C], rf: *rp, C: C, eps: eps}
	// Rows: r_n and dx, split over rows. Then dw, split over columns, each summed over the
	// rows in order.
	forRange(N, 1, be.workers(6*N*C), t)
	if dws != nil {
		t.dw = dws[:C]
		t.N = N
		forRange(C, elemAlign, be.workers(2*N*C), (*rmsBwdCols)(t))
	}
	rmsBwdArgs.put(t)
	putF32(rp)
}

// rmsBwd is RMSNormBackward's loop body over rows; it leaves float32(r_n) in rf.
type rmsBwd struct {
	dx, dw, dy, x, w, rf []float32 // (N, C) or nil, (C) or nil, (N, C), (N, C), (C), (N)
	N, C                 int
	eps                  float32
}

var rmsBwdArgs argPool[rmsBwd]

func (a *rmsBwd) run(lo, hi int) {
	C, ws := a.C, a.w
	for n := lo; n < hi; n++ {
		xr := a.x[n*C : (n+1)*C]   // (C,)
		dyr := a.dy[n*C : (n+1)*C] // (C,)
		var ss, dot float64
		for i, v := range xr {
			ss += float64(v) * float64(v)
			dot += float64(ws[i]) * float64(dyr[i]) * float64(v)
		}
		r := 1 / math.Sqrt(ss/float64(C)+float64(a.eps))
		rf := float32(r)
		a.rf[n] = rf
		if a.dx != nil {
			dxr := a.dx[n*C : (n+1)*C] // (C,)
			k := float32(r * r * r * dot / float64(C))
			for i, v := range xr {
				dxr[i] += rf*ws[i]*dyr[i] - k*v
			}
		}
	}
}

// rmsBwdCols is RMSNormBackward's loop body over the columns of dw.
type rmsBwdCols rmsBwd

func (a *rmsBwdCols) run(lo, hi int) {
	C, dw := a.C, a.dw[lo:hi]
	for n := 0; n < a.N; n++ {
		xr := a.x[n*C+lo : n*C+hi]   // (hi−lo,)
		dyr := a.dy[n*C+lo : n*C+hi] // (hi−lo,)
		rf := a.rf[n]
		for i, v := range xr {
			dw[i] += dyr[i] * v * rf
		}
	}
}

// RoPEForwardPos rotates x (N, NH, D) in place; row n is at position pos[n]. invFreq (D/2).
// The angle is float32(pos)·invFreq[i] as in RoPEForward.
func (be *Backend) RoPEForwardPos(x, invFreq backend.Buffer, pos []int, N, NH, D int) {
	be.ropePos("RoPEForwardPos", data(x), data(invFreq), pos, N, NH, D, 1)
}

// RoPEBackwardPos rotates the gradient dx (N, NH, D) in place by the opposite angles.
func (be *Backend) RoPEBackwardPos(dx, invFreq backend.Buffer, pos []int, N, NH, D int) {
	be.ropePos("RoPEBackwardPos", data(dx), data(invFreq), pos, N, NH, D, -1)
}

// ropePos rotates every head of row n of xs (N, NH, D) by sign·pos[n]·invFreq[i], split over rows.
func (be *Backend) ropePos(op string, xs, inv []float32, pos []int, N, NH, D int, sign float32) {
	half := D / 2
	need(op, "x", xs, N*NH*D)
	need(op, "invFreq", inv, half)
	if len(pos) != N {
		panic(fmt.Sprintf("cpu: %s: %d positions for %d rows", op, len(pos), N))
	}
	// The angles of every position 0..max(pos) once, when that is fewer than one per row:
	// cos and sin of float32(p·invFreq[i]), the same values the rows would compute.
	maxPos := 0
	for _, p := range pos {
		maxPos = max(maxPos, p)
	}
	var tab []float32 // (maxPos+1, 2, half): cos then sin
	var tp *[]float32
	if maxPos < N {
		tp = getF32((maxPos + 1) * D)
		tab = *tp
		for p := 0; p <= maxPos; p++ {
			for i, f := range inv[:half] {
				theta := float64(float32(p) * f)
				tab[p*D+i], tab[p*D+half+i] = float32(math.Cos(theta)), float32(math.Sin(theta))
			}
		}
	}
	t := ropeArgs.get()
	*t = ropeBody{x: xs, inv: inv[:half], tab: tab, pos: pos, NH: NH, D: D, sign: sign}
	forRange(N, 1, be.workers(N*NH*D*3), t)
	ropeArgs.put(t)
	if tp != nil {
		putF32(tp)
	}
}

// ropeBody is ropePos's loop body over rows.
type ropeBody struct {
	x, inv []float32 // (N, NH, D), (D/2)
	tab    []float32 // (maxPos+1, D): cos, sin of every position's angles, or nil
	pos    []int     // (N)
	NH, D  int
	sign   float32
}

var ropeArgs argPool[ropeBody]

func (a *ropeBody) run(lo, hi int) {
	NH, D := a.NH, a.D
	half := D / 2
	var stack [2 * 256]float32 // cos, sin of one row's angles when there is no table
	cs := stack[:]
	if half > 256 {
		cs = make([]float32, 2*half)
	}
	for n := lo; n < hi; n++ {
		var cosv, sinv []float32 // (half,)
		if a.tab != nil {
			p := a.pos[n]
			cosv, sinv = a.tab[p*D:p*D+half], a.tab[p*D+half:p*D+D]
		} else {
			cosv, sinv = cs[:half], cs[half:2*half]
			p := float32(a.pos[n])
			for i, f := range a.inv {
				theta := float64(p * f)
				cosv[i], sinv[i] = float32(math.Cos(theta)), float32(math.Sin(theta))
			}
		}
		row := a.x[n*NH*D : (n+1)*NH*D] // (NH, D)
		for h := 0; h < NH; h++ {
			x0s, x1s := row[h*D:h*D+half], row[h*D+half:h*D+D]
			for i, c := range cosv {
				s := a.sign * sinv[i]
				x0, x1 := x0s[i], x1s[i]
				x0s[i] = x0*c - x1*s
				x1s[i] = x1*c + x0*s
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

// attnBlock is the number of query rows the attention ops compute per matrix product: the
// causal mask is skipped a block at a time, so a block of rows [i0, i1) reads keys [0, i1).
const attnBlock = 64

// AttentionTrainForward computes causal, segment-masked GQA attention over whole sequences and
// saves the probabilities. out (B, T, NH·D), att (B, NH, T, T), q (B, T, NH·D),
// k (B, T, NKV·D), v (B, T, NKV·D), seg nil or (B·T).
//
// Per (batch, head) pair, in blocks of attnBlock query rows: the scores S = Q·Kᵀ go straight
// into att through the packed GEMM (only the key columns the block can see), each row becomes
// softmax(S·1/sqrt(D)) with masked entries exactly 0 (vec.Max, vec.ExpSum: exponentials summed
// in float64), and out = P·V by the GEMM again. Every element is computed the same way whatever
// the thread count.
func (be *Backend) AttentionTrainForward(out, att, q, k, v backend.Buffer, seg []int, B, T, NH, NKV, D int) {
	o, as, qs, ks, vs := data(out), data(att), data(q), data(k), data(v)
	need("AttentionTrainForward", "out", o, B*T*NH*D)
	need("AttentionTrainForward", "att", as, B*NH*T*T)
	need("AttentionTrainForward", "q", qs, B*T*NH*D)
	need("AttentionTrainForward", "k", ks, B*T*NKV*D)
	need("AttentionTrainForward", "v", vs, B*T*NKV*D)
	attnCheck("AttentionTrainForward", seg, B, T, NH, NKV)
	t := attnFwdArgs.get()
	*t = attnFwd{o: o, att: as, q: qs, k: ks, v: vs, seg: seg, T: T, NH: NH, NKV: NKV, D: D}
	// Causal: query t reads keys 0..t only, about half of the T×T scores.
	forRange(B*NH, 1, be.workers(B*NH*T*(T+1)/2*(2*D+4)), t)
	attnFwdArgs.put(t)
}

// attnFwd is AttentionTrainForward's loop body over (batch, head) pairs bh = b·NH + h.
type attnFwd struct {
	o, att, q, k, v []float32 // (B, T, NH·D), (B, NH, T, T), (B, T, NH·D), (B, T, NKV·D) ×2
	seg             []int     // (B·T) or nil
	T, NH, NKV, D   int
}

var attnFwdArgs argPool[attnFwd]

func (a *attnFwd) run(lo, hi int) {
	T, NH, NKV, D, seg := a.T, a.NH, a.NKV, a.D, a.seg
	groups := NH / NKV
	scale := float32(1 / math.Sqrt(float64(D)))
	ninf := float32(math.Inf(-1))
	for bh := lo; bh < hi; bh++ {
		b, h := bh/NH, bh%NH
		kh := h / groups
		qm := a.q[(b*T)*NH*D+h*D:]       // Q (T, D), row stride NH·D
		km := a.k[(b*T)*NKV*D+kh*D:]     // K (T, D), row stride NKV·D
		vm := a.v[(b*T)*NKV*D+kh*D:]     // V (T, D), row stride NKV·D
		om := a.o[(b*T)*NH*D+h*D:]       // out (T, D), row stride NH·D
		pm := a.att[bh*T*T : (bh+1)*T*T] // P (T, T)
		for i0 := 0; i0 < T; i0 += attnBlock {
			i1 := min(T, i0+attnBlock)
			// S[i0:i1, 0:i1] = Q[i0:i1]·K[0:i1]ᵀ
			gemm.Mul(nil, 1, pm[i0*T:], T, gemm.Mat{D: qm[i0*NH*D:], RS: NH * D, CS: 1},
				gemm.Mat{D: km, RS: 1, CS: NKV * D}, i1-i0, i1, D, false)
			for t := i0; t < i1; t++ {
				row := pm[t*T : (t+1)*T] // (T,) scores, then probabilities
				vis := row[:t+1]         // (t+1,) the keys query t may see
				if seg != nil {
					for s := range vis {
						if seg[b*T+s] != seg[b*T+t] {
							vis[s] = ninf
						}
					}
				}
				m := vec.Max(vis)
				sum := vec.ExpSum(vis, vis, m, scale) // exp((s − max)/sqrt(D)); masked → 0
				vec.Scale(vis, float32(1/sum))
				clear(row[t+1:]) // the masked upper part
			}
			// out[i0:i1] = P[i0:i1, 0:i1]·V[0:i1]
			gemm.Mul(nil, 1, om[i0*NH*D:], NH*D, gemm.Mat{D: pm[i0*T:], RS: T, CS: 1},
				gemm.Mat{D: vm, RS: NKV * D, CS: 1}, i1-i0, D, i1, false)
		}
	}
}

// AttentionBackward computes the gradients of AttentionTrainForward from its saved att:
// with dP = dout·Vᵀ and dS = P⊙(dP − rowsum(P⊙dP))/sqrt(D),
// dq += dS·K, dk += dSᵀ·Q, dv += Pᵀ·dout (all +=).
// dq (B, T, NH·D), dk (B, T, NKV·D), dv (B, T, NKV·D) or nil each; dout (B, T, NH·D),
// att (B, NH, T, T), q (B, T, NH·D), k (B, T, NKV·D), v (B, T, NKV·D), seg nil or (B·T).
// The work is split over (batch, KV head) pairs, so that the query heads that share a key/value
// head add into dk and dv on one goroutine, in head order. The products run through the packed
// GEMM a block of attnBlock rows at a time, skipping the masked upper blocks.
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
	t := attnBwdArgs.get()
	*t = attnBwd{dq: dqs, dk: dks, dv: dvs, dout: dos, att: as, q: qs, k: ks, v: vs, T: T, NH: NH, NKV: NKV, D: D}
	// Causal: only the pairs s ≤ t, half of the T×T.
	forRange(B*NKV, 1, be.workers(B*NH*T*(T+1)/2*4*D), t)
	attnBwdArgs.put(t)
}

// attnBwd is AttentionBackward's loop body over (batch, KV head) pairs bk = b·NKV + kh.
// (The segment mask needs no work here: masked probabilities are exactly 0, so their dS is 0.)
type attnBwd struct {
	dq, dk, dv, dout, att, q, k, v []float32 // shapes as in AttentionBackward
	T, NH, NKV, D                  int
}

var attnBwdArgs argPool[attnBwd]

func (a *attnBwd) run(lo, hi int) {
	T, NH, NKV, D := a.T, a.NH, a.NKV, a.D
	groups := NH / NKV
	scale := float32(1 / math.Sqrt(float64(D)))
	dsp := getF32(T * T)
	dS := *dsp // (T, T) dP, then dS, of one head; row t valid in columns [0, t]
	for bk := lo; bk < hi; bk++ {
		b, kh := bk/NKV, bk%NKV
		km := a.k[(b*T)*NKV*D+kh*D:] // K (T, D), row stride NKV·D
		vm := a.v[(b*T)*NKV*D+kh*D:] // V (T, D), row stride NKV·D
		for h := kh * groups; h < (kh+1)*groups; h++ {
			qm := a.q[(b*T)*NH*D+h*D:]                 // Q (T, D), row stride NH·D
			gm := a.dout[(b*T)*NH*D+h*D:]              // dout (T, D), row stride NH·D
			pm := a.att[(b*NH+h)*T*T : (b*NH+h+1)*T*T] // P (T, T)
			for i0 := 0; i0 < T; i0 += attnBlock {
				i1 := min(T, i0+attnBlock)
				// dP[i0:i1, 0:i1] = dout[i0:i1]·V[0:i1]ᵀ
				gemm.Mul(nil, 1, dS[i0*T:], T, gemm.Mat{D: gm[i0*NH*D:], RS: NH * D, CS: 1},
					gemm.Mat{D: vm, RS: 1, CS: NKV * D}, i1-i0, i1, D, false)
				for t := i0; t < i1; t++ {
					p := pm[t*T : t*T+t+1] // (t+1,)
					g := dS[t*T : t*T+i1]  // (i1,) dP, then dS
					pdp := vec.Dot(p, g)   // Σ_s P·dP
					for s, ps := range p {
						g[s] = ps * (g[s] - pdp) * scale
					}
					clear(g[t+1:])
				}
				if a.dq != nil {
					// dq[i0:i1] += dS[i0:i1, 0:i1]·K[0:i1]
					gemm.Mul(nil, 1, a.dq[(b*T+i0)*NH*D+h*D:], NH*D, gemm.Mat{D: dS[i0*T:], RS: T, CS: 1},
						gemm.Mat{D: km, RS: NKV * D, CS: 1}, i1-i0, D, i1, true)
				}
			}
			// Column blocks [j0, j1) of dS and P: rows j0..T−1 hold them (rows above are masked).
			for j0 := 0; j0 < T; j0 += attnBlock {
				j1 := min(T, j0+attnBlock)
				if a.dk != nil {
					// dk[j0:j1] += dS[j0:T, j0:j1]ᵀ·Q[j0:T]
					gemm.Mul(nil, 1, a.dk[(b*T+j0)*NKV*D+kh*D:], NKV*D, gemm.Mat{D: dS[j0*T+j0:], RS: 1, CS: T},
						gemm.Mat{D: qm[j0*NH*D:], RS: NH * D, CS: 1}, j1-j0, D, T-j0, true)
				}
				if a.dv != nil {
					// dv[j0:j1] += P[j0:T, j0:j1]ᵀ·dout[j0:T]
					gemm.Mul(nil, 1, a.dv[(b*T+j0)*NKV*D+kh*D:], NKV*D, gemm.Mat{D: pm[j0*T+j0:], RS: 1, CS: T},
						gemm.Mat{D: gm[j0*NH*D:], RS: NH * D, CS: 1}, j1-j0, D, T-j0, true)
				}
			}
		}
	}
	putF32(dsp)
}

// SwiGLUBackward computes dgate += dout·up·silu'(gate) and dup += dout·silu(gate) by
// vec.SwiGLUBackward: with g = gate and s = σ(g) as SwiGLUForward forms it (the same values),
// dgate += (dout·up)·(s·(1 + g·(1 − s))) and dup += dout·(g·s), float32 throughout, eight lanes
// at a time in AVX2 where the CPU has it. dgate (N) or nil, dup (N) or nil, dout (N), gate (N), up (N).
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
	t := swigluBwdArgs.get()
	*t = swigluBwd{dg: dg, du: du, do: do, g: g, u: u}
	forRange(N, elemAlign, be.workers(N*expCost), t)
	swigluBwdArgs.put(t)
}

// swigluBwd is SwiGLUBackward's elementwise loop body.
type swigluBwd struct{ dg, du, do, g, u []float32 } // (N) each, dg and du may be nil

var swigluBwdArgs argPool[swigluBwd]

func (a *swigluBwd) run(lo, hi int) {
	var dg, du []float32
	if a.dg != nil {
		dg = a.dg[lo:hi]
	}
	if a.du != nil {
		du = a.du[lo:hi]
	}
	vec.SwiGLUBackward(dg, du, a.do[lo:hi], a.g[lo:hi], a.u[lo:hi])
}

// EmbeddingBackward computes dtable[tokens[n], :] += dout[n, :] in token order.
// dtable (V, C), dout (N, C), N = len(tokens). The work is split over the columns of the table:
// each worker adds every token's slice of its columns, in token order.
func (be *Backend) EmbeddingBackward(dtable, dout backend.Buffer, tokens []int, C int) {
	dt, do := data(dtable), data(dout)
	N := len(tokens)
	need("EmbeddingBackward", "dout", do, N*C)
	checkTokens("EmbeddingBackward", tokens, dt, C)
	t := embBwdArgs.get()
	*t = embBwd{dt: dt, do: do, tokens: tokens, C: C}
	forRange(C, elemAlign, be.workers(N*C), t)
	embBwdArgs.put(t)
}

// embBwd is EmbeddingBackward's loop body over columns.
type embBwd struct {
	dt, do []float32 // (V, C), (N, C)
	tokens []int     // (N)
	C      int
}

var embBwdArgs argPool[embBwd]

func (a *embBwd) run(lo, hi int) {
	C := a.C
	for n, id := range a.tokens {
		dr := a.dt[id*C+lo : id*C+hi] // (hi−lo,)
		for c, g := range a.do[n*C+lo : n*C+hi] {
			dr[c] += g
		}
	}
}
