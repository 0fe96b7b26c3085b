package cpu

import (
	"math"

	"github.com/loractl/loractl/internal/backend"
	"github.com/loractl/loractl/internal/backend/cpu/gemm"
	"github.com/loractl/loractl/internal/backend/cpu/vec"
)

// EmbeddingForward gathers table rows: out[n, :] = table[tokens[n], :].
// out (N, C), table (V, C) F32 or BF16 (rows widened exactly), N = len(tokens).
func (be *Backend) EmbeddingForward(out, table backend.Buffer, tokens []int, C int) {
	o := data(out)
	tab, tabh := weight(table)
	N := len(tokens)
	need("EmbeddingForward", "out", o, N*C)
	checkTokensN("EmbeddingForward", tokens, weightLen(tab, tabh), C)
	if tabh != nil {
		for n, id := range tokens {
			gemm.Widen(o[n*C:(n+1)*C], tabh[id*C:(id+1)*C])
		}
		return
	}
	for n, id := range tokens {
		copy(o[n*C:(n+1)*C], tab[id*C:(id+1)*C])
	}
}

// checkTokens panics if a token id is outside the V = len(table)/C rows of table; the caller
// (the model, the engine) validates user input, so this is a programming error.
func checkTokens(op string, tokens []int, table []float32, C int) {
	checkTokensN(op, tokens, len(table), C)
}

// checkTokensN is checkTokens for a table of n elements.
func checkTokensN(op string, tokens []int, n, C int) {
	V := 0
	if C > 0 {
		V = n / C
	}
	for _, id := range tokens {
		if id < 0 || id >= V {
			panic("cpu: " + op + ": token id out of range (the caller must validate tokens)")
		}
	}
}

// RMSNormForward computes out[n, :] = x[n, :] / sqrt(mean(x[n, :]²) + eps) * w.
// out (N, C), x (N, C), w (C). The mean of squares is accumulated in float64 and the scale
// rounded to float32, then out = w * (x * scale) in float32 as in Hugging Face. out may be x.
func (be *Backend) RMSNormForward(out, x, w backend.Buffer, N, C int, eps float32) {
	o, xs, ws := data(out), data(x), data(w)
	need("RMSNormForward", "out", o, N*C)
	need("RMSNormForward", "x", xs, N*C)
	need("RMSNormForward", "w", ws, C)
	a := rmsFwdArgs.get()
	*a = rmsFwd{o: o, x: xs, w: ws[:C], C: C, eps: eps}
	forRange(N, 1, be.workers(3*N*C), a)
	rmsFwdArgs.put(a)
}

// rmsFwd is RMSNormForward's loop body over rows.
type rmsFwd struct {
	o, x, w []float32 // (N, C), (N, C), (C)
	C       int
	eps     float32
}

var rmsFwdArgs argPool[rmsFwd]

func (a *rmsFwd) run(lo, hi int) {
	C, ws := a.C, a.w
	for n := lo; n < hi; n++ {
		xr := a.x[n*C : (n+1)*C] // (C,)
		or := a.o[n*C : (n+1)*C] // (C,)
		var ss float64
		for _, v := range xr {
			ss += float64(v) * float64(v)
		}
		scale := float32(1 / math.Sqrt(ss/float64(C)+float64(a.eps)))
		for i, v := range xr {
			or[i] = ws[i] * (v * scale)
		}
	}
}

// RoPEForward rotates x in place (Hugging Face rotate_half layout):
//
//	x'[i]     = x[i]·cos(θ_i) − x[i+D/2]·sin(θ_i)
//	x'[i+D/2] = x[i+D/2]·cos(θ_i) + x[i]·sin(θ_i),   θ_i = float32(pos)·invFreq[i], i < D/2
//
// x (B, T, NH, D), invFreq (D/2); row t is at position pos0+t in every batch element. The angle
// is a float32 product, as in transformers; cos and sin are evaluated in float64 and rounded.
func (be *Backend) RoPEForward(x, invFreq backend.Buffer, B, T, NH, D, pos0 int) {
	xs, inv := data(x), data(invFreq)
	half := D / 2
	need("RoPEForward", "x", xs, B*T*NH*D)
	need("RoPEForward", "invFreq", inv, half)
	for t := 0; t < T; t++ {
		pos := float32(pos0 + t)
		for i := 0; i < half; i++ {
			theta := float64(pos * inv[i])
			c, s := float32(math.Cos(theta)), float32(math.Sin(theta))
			for b := 0; b < B; b++ {
				row := xs[(b*T+t)*NH*D : (b*T+t+1)*NH*D] // (NH, D)
				for h := 0; h < NH; h++ {
					x0, x1 := row[h*D+i], row[h*D+i+half]
					row[h*D+i] = x0*c - x1*s
					row[h*D+i+half] = x1*c + x0*s
				}
			}
		}
	}
}

// AttentionForward computes causal grouped-query attention over a key/value cache.
// out (B, T, NH·D), q (B, T, NH·D), k (B, S, NKV·D), v (B, S, NKV·D).
// Query t (position pos0+t) of head h attends to keys 0..pos0+t of KV head h/(NH/NKV):
// scores = q·k/sqrt(D) in float32 (vec.Dot), softmax with the maximum subtracted (vec.ExpSum:
// float32 exponentials summed in float64), then out = Σ p_s·v_s accumulated in float32 (vec.Axpy).
func (be *Backend) AttentionForward(out, q, k, v backend.Buffer, B, T, S, pos0, NH, NKV, D int) {
	o, qs, ks, vs := data(out), data(q), data(k), data(v)
	need("AttentionForward", "out", o, B*T*NH*D)
	need("AttentionForward", "q", qs, B*T*NH*D)
	need("AttentionForward", "k", ks, B*S*NKV*D)
	need("AttentionForward", "v", vs, B*S*NKV*D)
	if pos0+T > S || NKV <= 0 || NH%NKV != 0 {
		panic("cpu: AttentionForward: need pos0+T <= S and NKV dividing NH")
	}
	work := B * NH * T * (pos0 + T) * D // multiply-adds, roughly
	nw := be.workers(work)
	if nw == 1 {
		be.attentionHeads(o, qs, ks, vs, B, T, S, pos0, NH, NKV, D, 0, B*NH)
		return
	}
	t := attnInferArgs.get()
	*t = attnInfer{be: be, o: o, q: qs, k: ks, v: vs, B: B, T: T, S: S, pos0: pos0, NH: NH, NKV: NKV, D: D}
	forRange(B*NH, 1, nw, t)
	attnInferArgs.put(t)
}

// attnInfer is AttentionForward's loop body over (batch, head) pairs (recycled, so that a
// generated token allocates nothing here).
type attnInfer struct {
	be                        *Backend
	o, q, k, v                []float32 // shapes as in AttentionForward
	B, T, S, pos0, NH, NKV, D int
}

var attnInferArgs argPool[attnInfer]

func (a *attnInfer) run(lo, hi int) {
	a.be.attentionHeads(a.o, a.q, a.k, a.v, a.B, a.T, a.S, a.pos0, a.NH, a.NKV, a.D, lo, hi)
}

// attentionHeads runs AttentionForward for the (batch, head) pairs bh in [lo, hi), bh = b·NH + h.
func (be *Backend) attentionHeads(o, qs, ks, vs []float32, B, T, S, pos0, NH, NKV, D, lo, hi int) {
	L := pos0 + T      // keys visible to the last query
	groups := NH / NKV // query heads per KV head
	scale := float32(1 / math.Sqrt(float64(D)))
	sp := getF32(L)
	att := *sp // (L,) scores, then probabilities
	for bh := lo; bh < hi; bh++ {
		b, h := bh/NH, bh%NH
		kh := h / groups
		for t := 0; t < T; t++ {
			n := pos0 + t + 1                                 // visible keys
			qv := qs[(b*T+t)*NH*D+h*D : (b*T+t)*NH*D+(h+1)*D] // (D,)
			ov := o[(b*T+t)*NH*D+h*D : (b*T+t)*NH*D+(h+1)*D]  // (D,)
			sc := att[:n]                                     // (n,) scores, then probabilities
			for s := range sc {
				kv := ks[(b*S+s)*NKV*D+kh*D : (b*S+s)*NKV*D+(kh+1)*D] // (D,)
				sc[s] = vec.Dot(qv, kv) * scale
			}
			maxv := vec.Max(sc)
			inv := float32(1 / vec.ExpSum(sc, sc, maxv, 1))
			clear(ov)
			for s, e := range sc {
				vv := vs[(b*S+s)*NKV*D+kh*D : (b*S+s)*NKV*D+(kh+1)*D] // (D,)
				vec.Axpy(ov, vv, e*inv)
			}
		}
	}
	putF32(sp)
}

// SwiGLUForward computes out = silu(gate) * up with silu(g) = g·σ(g), σ(g) = 1/(1 + exp(−g)), by
// vec.SwiGLU: float32 throughout, vec's exponential and a true division for σ, then (g·σ)·up,
// eight lanes at a time in AVX2 where the CPU has it; each element's result depends only on its
// inputs. out (N), gate (N), up (N); out may alias gate or up.
func (be *Backend) SwiGLUForward(out, gate, up backend.Buffer, N int) {
	o, g, u := data(out), data(gate), data(up)
	need("SwiGLUForward", "out", o, N)
	need("SwiGLUForward", "gate", g, N)
	need("SwiGLUForward", "up", u, N)
	a := swigluFwdArgs.get()
	*a = swigluFwd{o: o[:N], g: g[:N], u: u[:N]}
	forRange(N, elemAlign, be.workers(expCost*N), a)
	swigluFwdArgs.put(a)
}

// swigluFwd is SwiGLUForward's elementwise loop body.
type swigluFwd struct{ o, g, u []float32 } // (N) each

var swigluFwdArgs argPool[swigluFwd]

func (a *swigluFwd) run(lo, hi int) {
	vec.SwiGLU(a.o[lo:hi], a.g[lo:hi], a.u[lo:hi])
}

// expCost is the work of one float64 exp, in multiply-adds, for choosing the worker count.
const expCost = 16

// elemAlign is the chunk alignment of elementwise loops (a cache line of float32s), so that two
// workers never write the same line.
const elemAlign = 16

// AddForward computes out = a + b. out (N), a (N), b (N); out may alias a or b.
func (be *Backend) AddForward(out, a, b backend.Buffer, N int) {
	o, as, bs := data(out), data(a), data(b)
	need("AddForward", "out", o, N)
	need("AddForward", "a", as, N)
	need("AddForward", "b", bs, N)
	t := addFwdArgs.get()
	*t = addFwd{o: o[:N], a: as[:N], b: bs[:N]}
	forRange(N, elemAlign, be.workers(N), t)
	addFwdArgs.put(t)
}

// addFwd is AddForward's elementwise loop body.
type addFwd struct{ o, a, b []float32 } // (N) each

var addFwdArgs argPool[addFwd]

func (a *addFwd) run(lo, hi int) {
	o, as, bs := a.o[lo:hi], a.a[lo:hi], a.b[lo:hi]
	for i := range o {
		o[i] = as[i] + bs[i]
	}
}
