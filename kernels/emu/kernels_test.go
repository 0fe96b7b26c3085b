package emu

import (
	"math"
	"math/rand/v2"
	"sort"
	"testing"

	"github.com/loractl/loractl/internal/backend"
	"github.com/loractl/loractl/internal/backend/cpu"
	"github.com/loractl/loractl/internal/optim"
	"github.com/loractl/loractl/internal/safetensors"
	"github.com/loractl/loractl/kernels"
)

// Every kernel of kernels.Modules against the CPU backend op it mirrors, launched as the CUDA
// backend launches it (internal/backend/cuda/backend_cuda.go, trainer_cuda.go), on fresh random
// inputs; outputs are poisoned, gradients start from random values (the backward ops add).

func randv(r *rand.Rand, n int, scale float32) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = (r.Float32()*2 - 1) * scale
	}
	return x
}

// host is a CPU backend with upload and download helpers.
type host struct{ be *cpu.Backend }

func newHost() host { return host{cpu.New()} }

func (h host) up(x []float32) backend.Buffer {
	b := h.be.Alloc(len(x))
	if err := h.be.Upload(b, x); err != nil {
		panic(err)
	}
	return b
}

func (h host) down(b backend.Buffer) []float32 {
	x := make([]float32, b.Len())
	if err := h.be.Download(x, b); err != nil {
		panic(err)
	}
	return x
}

// checks maps every kernel to its check. TestEveryKernelChecked fails for a kernel of
// kernels.Modules that has none.
var checks = map[string]func(t *testing.T){
	"rmsnorm_forward":             checkRMSNormForward,
	"rmsnorm_backward_rows":       checkRMSNormBackward,
	"rmsnorm_backward_dw":         checkRMSNormBackward,
	"swiglu_forward":              checkSwiGLUForward,
	"swiglu_backward":             checkSwiGLUBackward,
	"rope_pos":                    checkRoPE,
	"embedding_forward":           checkEmbeddingForward,
	"embedding_forward_bf16":      checkEmbeddingForwardBF16,
	"add_forward":                 checkAddForward,
	"axpy":                        checkAxpy,
	"scale":                       checkScale,
	"cast_f32_bf16":               checkCasts,
	"cast_bf16_f32":               checkCasts,
	"cross_entropy":               checkCrossEntropy,
	"adamw":                       checkAdamW,
	"attention_forward":           checkAttentionForward,
	"add_bias":                    checkAddBias,
	"attention_train_forward":     checkAttentionTrainForward,
	"attention_backward_q":        checkAttentionBackward,
	"attention_backward_kv":       checkAttentionBackward,
	"embedding_backward":          checkEmbeddingBackward,
	"bias_backward":               checkBiasBackward,
	"col_scale":                   checkColScale,
	"col_scale_backward":          checkColScaleBackward,
	"flash_attention_forward":     checkFlashForward,
	"flash_attention_backward_q":  checkFlashBackward,
	"flash_attention_backward_kv": checkFlashBackward,
}

// TestKernels runs the check of every kernel of kernels.Modules and fails for a kernel that has
// none, or whose check does not launch it.
func TestKernels(t *testing.T) {
	emulator(t)
	var names []string
	for _, m := range kernels.Modules {
		for _, e := range m.Entries {
			names = append(names, e)
			t.Run(e, func(t *testing.T) {
				c, ok := checks[e]
				if !ok {
					t.Fatalf("kernel %s (%s.cu) has no emulator check: add one to kernels/emu/kernels_test.go", e, m.Name)
				}
				c(t)
				launchedMu.Lock()
				ran := launched[t.Name()][e]
				launchedMu.Unlock()
				if !ran {
					t.Errorf("the check registered for %s does not launch it", e)
				}
			})
		}
	}
	maxErrMu.Lock()
	defer maxErrMu.Unlock()
	sort.Strings(names)
	for _, k := range names {
		if e, ok := maxErr[k]; ok {
			t.Logf("%-24s max rel error %.3g", k, e)
		}
	}
}

// TestEveryKernelChecked: every kernel of kernels.Modules has a check (this runs without g++
// too), and no check is left for a kernel Modules no longer lists.
func TestEveryKernelChecked(t *testing.T) {
	listed := map[string]bool{}
	for _, m := range kernels.Modules {
		for _, e := range m.Entries {
			listed[e] = true
			if checks[e] == nil {
				t.Errorf("kernel %s (%s.cu) has no emulator check", e, m.Name)
			}
		}
	}
	for k := range checks {
		if !listed[k] {
			t.Errorf("check for %s, which kernels.Modules does not list", k)
		}
	}
}

func checkRMSNormForward(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	for _, s := range []struct{ N, C int }{{7, 300}, {3, 64}, {2, 1000}} {
		N, C := s.N, s.C
		eps := float32(1e-5)
		x, w := randv(r, N*C, 2), randv(r, C, 1)
		h := newHost()
		o := h.be.Alloc(N * C)
		h.be.RMSNormForward(o, h.up(x), h.up(w), N, C, eps)
		res := launch(t, "rmsnorm_forward", N, 256, out(N*C), in(x), in(w), i32(N), i32(C), f32(eps))
		closeTo(t, "rmsnorm_forward", res.f32(0), h.down(o), 1e-5)
	}
}

func checkRMSNormBackward(t *testing.T) {
	r := rand.New(rand.NewPCG(2, 2))
	for _, s := range []struct{ N, C int }{{7, 300}, {5, 32}, {300, 40}} {
		N, C := s.N, s.C
		eps := float32(1e-5)
		x, w, dy := randv(r, N*C, 2), randv(r, C, 1), randv(r, N*C, 1)
		dx0, dw0 := randv(r, N*C, 1), randv(r, C, 1)
		h := newHost()
		dxc, dwc := h.up(dx0), h.up(dw0)
		h.be.RMSNormBackward(dxc, dwc, h.up(dy), h.up(x), h.up(w), N, C, eps)
		rows := launch(t, "rmsnorm_backward_rows", N, 256, inout(dx0), out(N), in(dy), in(x), in(w), i32(N), i32(C), f32(eps))
		closeTo(t, "rmsnorm_backward_rows dx", rows.f32(0), h.down(dxc), 1e-5)
		dw := launch(t, "rmsnorm_backward_dw", (C+255)/256, 256, inout(dw0), in(dy), in(x), in(rows.f32(1)), i32(N), i32(C))
		closeTo(t, "rmsnorm_backward_dw dw", dw.f32(0), h.down(dwc), 1e-5)
		// dx not wanted: only rstd is written.
		rs := launch(t, "rmsnorm_backward_rows", N, 256, null(), out(N), in(dy), in(x), in(w), i32(N), i32(C), f32(eps))
		closeTo(t, "rmsnorm_backward_rows rstd (dx NULL)", rs.f32(1), rows.f32(1), 0)
	}
}

func checkSwiGLUForward(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 3))
	for _, N := range []int{1000, 70001} {
		g, u := randv(r, N, 6), randv(r, N, 2)
		h := newHost()
		o := h.be.Alloc(N)
		h.be.SwiGLUForward(o, h.up(g), h.up(u), N)
		res := launch(t, "swiglu_forward", elems(N), 256, out(N), in(g), in(u), i64(N))
		closeTo(t, "swiglu_forward", res.f32(0), h.down(o), 1e-5)
		// Grid-stride loop (a grid smaller than N/256) and out = gate in place.
		res = launch(t, "swiglu_forward", 3, 64, inout(g), alias(0), in(u), i64(N))
		closeTo(t, "swiglu_forward in place", res.f32(0), h.down(o), 1e-5)
	}
}

func checkSwiGLUBackward(t *testing.T) {
	r := rand.New(rand.NewPCG(4, 4))
	N := 3001
	g, u, do := randv(r, N, 6), randv(r, N, 2), randv(r, N, 1)
	dg0, du0 := randv(r, N, 1), randv(r, N, 1)
	h := newHost()
	dgc, duc := h.up(dg0), h.up(du0)
	h.be.SwiGLUBackward(dgc, duc, h.up(do), h.up(g), h.up(u), N)
	res := launch(t, "swiglu_backward", elems(N), 256, inout(dg0), inout(du0), in(do), in(g), in(u), i64(N))
	closeTo(t, "swiglu_backward dg", res.f32(0), h.down(dgc), 1e-5)
	closeTo(t, "swiglu_backward du", res.f32(1), h.down(duc), 1e-5)
	res = launch(t, "swiglu_backward", 2, 256, null(), inout(du0), in(do), in(g), in(u), i64(N))
	closeTo(t, "swiglu_backward du (dg NULL)", res.f32(1), h.down(duc), 1e-5)
	res = launch(t, "swiglu_backward", 2, 256, inout(dg0), null(), in(do), in(g), in(u), i64(N))
	closeTo(t, "swiglu_backward dg (du NULL)", res.f32(0), h.down(dgc), 1e-5)
}

func invFreq(D int) []float32 {
	inv := make([]float32, D/2)
	for i := range inv {
		inv[i] = float32(math.Pow(10000, -2*float64(i)/float64(D)))
	}
	return inv
}

func checkRoPE(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 5))
	for _, s := range []struct{ N, NH, D int }{{9, 3, 16}, {5, 2, 128}, {40, 4, 64}} {
		N, NH, D := s.N, s.NH, s.D
		x := randv(r, N*NH*D, 1)
		inv := invFreq(D)
		pos := make([]int, N)
		for n := range pos {
			pos[n] = r.IntN(3000) // packed samples: arbitrary positions per row
		}
		h := newHost()
		xf, xb := h.up(x), h.up(x)
		h.be.RoPEForwardPos(xf, h.up(inv), pos, N, NH, D)
		h.be.RoPEBackwardPos(xb, h.up(inv), pos, N, NH, D)
		grid := elems(N * NH * D / 2)
		res := launch(t, "rope_pos", grid, 256, inout(x), in(inv), in(ints(pos)), i32(N), i32(NH), i32(D), f32(1))
		closeTo(t, "rope_pos forward", res.f32(0), h.down(xf), 1e-5)
		res = launch(t, "rope_pos", grid, 256, inout(x), in(inv), in(ints(pos)), i32(N), i32(NH), i32(D), f32(-1))
		closeTo(t, "rope_pos backward", res.f32(0), h.down(xb), 1e-5)
	}
}

func tokens(r *rand.Rand, n, V int) []int {
	ids := make([]int, n)
	for i := range ids {
		ids[i] = r.IntN(V)
	}
	return ids
}

func checkEmbeddingForward(t *testing.T) {
	r := rand.New(rand.NewPCG(6, 6))
	V, C, N := 50, 300, 11
	table := randv(r, V*C, 1)
	ids := tokens(r, N, V)
	ids[3] = ids[7] // a repeated token
	h := newHost()
	o := h.be.Alloc(N * C)
	h.be.EmbeddingForward(o, h.up(table), ids, C)
	res := launch(t, "embedding_forward", N, 256, out(N*C), in(table), in(ints(ids)), i32(N), i32(C))
	closeTo(t, "embedding_forward", res.f32(0), h.down(o), 0)
}

func checkEmbeddingForwardBF16(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	V, C, N := 40, 260, 9
	bits := make([]uint16, V*C)
	for i, v := range randv(r, V*C, 3) {
		bits[i] = safetensors.Float32ToBF16(v)
	}
	ids := tokens(r, N, V)
	h := newHost()
	tb := h.be.AllocWeight(V*C, backend.BF16)
	if err := h.be.UploadBF16(tb, bits); err != nil {
		t.Fatal(err)
	}
	o := h.be.Alloc(N * C)
	h.be.EmbeddingForward(o, tb, ids, C)
	res := launch(t, "embedding_forward_bf16", N, 256, out(N*C), in(bits), in(ints(ids)), i32(N), i32(C))
	closeTo(t, "embedding_forward_bf16", res.f32(0), h.down(o), 0)
}

func checkAddForward(t *testing.T) {
	r := rand.New(rand.NewPCG(8, 8))
	N := 5003
	a, b := randv(r, N, 3), randv(r, N, 3)
	h := newHost()
	o := h.be.Alloc(N)
	h.be.AddForward(o, h.up(a), h.up(b), N)
	res := launch(t, "add_forward", elems(N), 256, out(N), in(a), in(b), i64(N))
	closeTo(t, "add_forward", res.f32(0), h.down(o), 0)
	res = launch(t, "add_forward", 2, 128, inout(a), alias(0), in(b), i64(N)) // out = a, grid-stride
	closeTo(t, "add_forward in place", res.f32(0), h.down(o), 0)
}

func checkAxpy(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 9))
	N := 4099
	y, x := randv(r, N, 3), randv(r, N, 3)
	h := newHost()
	yc := h.up(y)
	h.be.Axpy(yc, h.up(x), -0.37, N)
	res := launch(t, "axpy", elems(N), 256, inout(y), in(x), f32(-0.37), i64(N))
	closeTo(t, "axpy", res.f32(0), h.down(yc), 1e-5) // the CPU fuses the multiply-add
}

func checkScale(t *testing.T) {
	r := rand.New(rand.NewPCG(10, 10))
	N := 2500
	x := randv(r, N, 3)
	h := newHost()
	xc := h.up(x)
	h.be.Scale(xc, 1.7, N)
	res := launch(t, "scale", elems(N), 256, inout(x), f32(1.7), i64(N))
	closeTo(t, "scale", res.f32(0), h.down(xc), 0)
}

// checkCasts: float32 → bfloat16 rounds to nearest even as the safetensors codec does (NaN stays
// a NaN), and bfloat16 → float32 is exact.
func checkCasts(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 11))
	src := append(randv(r, 3000, 100), float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.NaN()), 0, float32(math.Copysign(0, -1)), 1e-40, 3.4e38, 1.00390625, 1.01171875)
	N := len(src)
	res := launch(t, "cast_f32_bf16", 8, 256, outU16(N), in(src), i64(N))
	bits := res.u16(0)
	for i, v := range src {
		w := safetensors.Float32ToBF16(v)
		if bits[i] != w && !(v != v && bits[i]&0x7fff > 0x7f80) {
			t.Fatalf("cast_f32_bf16(%g) = %#x, want %#x", v, bits[i], w)
		}
	}
	back := launch(t, "cast_bf16_f32", 8, 256, out(N), in(bits), i64(N)).f32(0)
	for i, v := range back {
		if math.Float32bits(v) != uint32(bits[i])<<16 {
			t.Fatalf("cast_bf16_f32(%#x) = %g", bits[i], v)
		}
	}
	t.Logf("casts: %d values, bitwise equal", N)
}

func checkCrossEntropy(t *testing.T) {
	r := rand.New(rand.NewPCG(12, 12))
	N, V := 6, 3001
	logits := randv(r, N*V, 8)
	targets := []int{7, backend.IgnoreIndex, 3000, 0, 1500, 255}
	scale := float32(0.25)
	h := newHost()
	lc, dc := h.be.Alloc(N), h.be.Alloc(N*V)
	h.be.CrossEntropyForwardBackward(lc, dc, h.up(logits), targets, N, V, scale)
	lo, db := h.be.Alloc(N), h.be.Alloc(N*V)
	h.be.CrossEntropyForward(lo, h.up(logits), targets, N, V)
	h.be.CrossEntropyBackward(db, h.up(logits), targets, N, V, scale)
	tg := in(ints(targets))
	res := launch(t, "cross_entropy", N, 256, out(N), out(N*V), in(logits), tg, i32(N), i32(V), f32(scale))
	closeTo(t, "cross_entropy losses", res.f32(0), h.down(lc), 1e-5)
	closeTo(t, "cross_entropy dlogits", res.f32(1), h.down(dc), 1e-5)
	res = launch(t, "cross_entropy", N, 256, out(N), alias(2), inout(logits), tg, i32(N), i32(V), f32(scale))
	closeTo(t, "cross_entropy in place", res.f32(2), h.down(dc), 1e-5)
	res = launch(t, "cross_entropy", N, 256, out(N), null(), in(logits), tg, i32(N), i32(V), f32(0))
	closeTo(t, "cross_entropy losses only", res.f32(0), h.down(lo), 1e-5)
	res = launch(t, "cross_entropy", N, 256, null(), out(N*V), in(logits), tg, i32(N), i32(V), f32(scale))
	closeTo(t, "cross_entropy dlogits only", res.f32(1), h.down(db), 1e-5)
}

// checkAdamW: two fused steps give the bits of internal/optim's AdamW, with the scalars formed as
// AdamW.Step forms them.
func checkAdamW(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 13))
	N := 777
	x := randv(r, N, 1)
	g1, g2 := randv(r, N, 0.1), randv(r, N, 0.1)
	cfg := optim.DefaultAdamW()
	cfg.WeightDecay = 0.01
	hostX := append([]float32(nil), x...)
	grad := append([]float32(nil), g1...)
	opt, err := optim.NewAdamW(cfg, []optim.Group{{Params: []optim.Param{{Name: "p", Data: hostX, Grad: grad}}, LRScale: 1}})
	if err != nil {
		t.Fatal(err)
	}
	lr := 1e-3
	m, v := make([]float32, N), make([]float32, N)
	for step, g := range [][]float32{g1, g2} {
		copy(grad, g)
		opt.Step(lr)
		n := float64(step + 1)
		bc1 := 1 - math.Pow(cfg.Beta1, n)
		w1 := float32(1 - cfg.Beta1)
		res := launch(t, "adamw", 4, 256, inout(x), in(g), inout(m), inout(v), i64(N), f32(float32(1-lr*cfg.WeightDecay)), f32(w1), f32(1-w1),
			f32(float32(cfg.Beta2)), f32(float32(1-cfg.Beta2)), f32(float32(cfg.Eps)), f32(float32(math.Sqrt(1-math.Pow(cfg.Beta2, n)))), f32(float32(-(lr / bc1))))
		x, m, v = res.f32(0), res.f32(2), res.f32(3)
		for i := range x {
			if math.Float32bits(x[i]) != math.Float32bits(hostX[i]) {
				t.Fatalf("adamw step %d: x[%d] = %g, internal/optim gives %g", step+1, i, x[i], hostX[i])
			}
		}
	}
	t.Logf("adamw: %d parameters, two steps, bitwise equal", N)
}

func checkAttentionForward(t *testing.T) {
	r := rand.New(rand.NewPCG(14, 14))
	for _, s := range []struct{ B, T, S, pos0, NH, NKV, D int }{
		{2, 3, 6, 2, 4, 2, 8}, {1, 5, 160, 150, 2, 1, 64}, {2, 7, 9, 0, 3, 3, 128}, {1, 1, 300, 299, 8, 2, 64},
	} {
		B, T, S, pos0, NH, NKV, D := s.B, s.T, s.S, s.pos0, s.NH, s.NKV, s.D
		q, k, v := randv(r, B*T*NH*D, 1), randv(r, B*S*NKV*D, 1), randv(r, B*S*NKV*D, 1)
		h := newHost()
		o := h.be.Alloc(B * T * NH * D)
		h.be.AttentionForward(o, h.up(q), h.up(k), h.up(v), B, T, S, pos0, NH, NKV, D)
		rows := B * NH * T
		res := launch(t, "attention_forward", rows, 128, out(B*T*NH*D), in(q), in(k), in(v), out(rows*(pos0+T)),
			i32(B), i32(T), i32(S), i32(pos0), i32(NH), i32(NKV), i32(D))
		closeTo(t, "attention_forward", res.f32(0), h.down(o), 1e-5)
	}
}

func checkAddBias(t *testing.T) {
	r := rand.New(rand.NewPCG(15, 15))
	N, C, OC := 13, 17, 301
	x, w, bias := randv(r, N*C, 1), randv(r, OC*C, 1), randv(r, OC, 1)
	h := newHost()
	y, yb := h.be.Alloc(N*OC), h.be.Alloc(N*OC)
	h.be.MatMulForward(y, h.up(x), h.up(w), nil, N, C, OC)
	h.be.MatMulForward(yb, h.up(x), h.up(w), h.up(bias), N, C, OC)
	res := launch(t, "add_bias", elems(N*OC), 256, inout(h.down(y)), in(bias), i32(N), i32(OC))
	closeTo(t, "add_bias", res.f32(0), h.down(yb), 1e-6)
}

// attnShape is one attention training shape; seg nil means one sequence per batch element.
type attnShape struct {
	B, T, NH, NKV, D int
	seg              []int
}

// packedSeg returns segment ids for B rows of T tokens: samples of random lengths packed back to
// back (ids increase along a row, as the data loader packs them).
func packedSeg(r *rand.Rand, B, T int) []int {
	seg := make([]int, B*T)
	for b := 0; b < B; b++ {
		id, left := 0, 1+r.IntN(T/2+1)
		for t := 0; t < T; t++ {
			if left == 0 {
				id++
				left = 1 + r.IntN(T/2+1)
			}
			seg[b*T+t] = id
			left--
		}
	}
	return seg
}

func attnShapes(r *rand.Rand) []attnShape {
	return []attnShape{
		{B: 2, T: 37, NH: 4, NKV: 2, D: 16},
		{B: 1, T: 130, NH: 2, NKV: 1, D: 64},
		{B: 2, T: 45, NH: 4, NKV: 1, D: 64, seg: packedSeg(r, 2, 45)},
		{B: 1, T: 33, NH: 2, NKV: 2, D: 128, seg: packedSeg(r, 1, 33)},
		{B: 1, T: 1, NH: 2, NKV: 1, D: 64},
	}
}

func segArg(seg []int) arg {
	if seg == nil {
		return null()
	}
	return in(ints(seg))
}

func checkAttentionTrainForward(t *testing.T) {
	r := rand.New(rand.NewPCG(16, 16))
	for _, s := range attnShapes(r) {
		B, T, NH, NKV, D := s.B, s.T, s.NH, s.NKV, s.D
		q, k, v := randv(r, B*T*NH*D, 1), randv(r, B*T*NKV*D, 1), randv(r, B*T*NKV*D, 1)
		h := newHost()
		o, att := h.be.Alloc(B*T*NH*D), h.be.Alloc(B*NH*T*T)
		h.be.AttentionTrainForward(o, att, h.up(q), h.up(k), h.up(v), s.seg, B, T, NH, NKV, D)
		res := launch(t, "attention_train_forward", B*NH*T, 128, out(B*T*NH*D), out(B*NH*T*T), in(q), in(k), in(v), segArg(s.seg),
			i32(B), i32(T), i32(NH), i32(NKV), i32(D))
		closeTo(t, "attention_train_forward out", res.f32(0), h.down(o), 1e-5)
		closeTo(t, "attention_train_forward att", res.f32(1), h.down(att), 1e-5)
	}
}

// cpuAttentionGrads runs the CPU backend's training attention forward and backward for shape s:
// the probabilities P (B, NH, T, T), and dq0, dk0, dv0 with the gradients added.
func cpuAttentionGrads(s attnShape, q, k, v, do, dq0, dk0, dv0 []float32) (P, dq, dk, dv []float32) {
	B, T, NH, NKV, D := s.B, s.T, s.NH, s.NKV, s.D
	h := newHost()
	o, att := h.be.Alloc(len(q)), h.be.Alloc(B*NH*T*T)
	h.be.AttentionTrainForward(o, att, h.up(q), h.up(k), h.up(v), s.seg, B, T, NH, NKV, D)
	dqc, dkc, dvc := h.up(dq0), h.up(dk0), h.up(dv0)
	h.be.AttentionBackward(dqc, dkc, dvc, h.up(do), att, h.up(q), h.up(k), h.up(v), s.seg, B, T, NH, NKV, D)
	return h.down(att), h.down(dqc), h.down(dkc), h.down(dvc)
}

func checkAttentionBackward(t *testing.T) {
	r := rand.New(rand.NewPCG(17, 17))
	for _, s := range attnShapes(r) {
		B, T, NH, NKV, D := s.B, s.T, s.NH, s.NKV, s.D
		nq, nk := B*T*NH*D, B*T*NKV*D
		q, k, v, do := randv(r, nq, 1), randv(r, nk, 1), randv(r, nk, 1), randv(r, nq, 1)
		dq0, dk0, dv0 := randv(r, nq, 1), randv(r, nk, 1), randv(r, nk, 1)
		P, dqc, dkc, dvc := cpuAttentionGrads(s, q, k, v, do, dq0, dk0, dv0)
		dims := []arg{i32(B), i32(T), i32(NH), i32(NKV), i32(D)}
		resQ := launch(t, "attention_backward_q", B*NH*T, 128, append([]arg{inout(dq0), out(B * NH * T * T), in(do), in(P), in(k), in(v)}, dims...)...)
		closeTo(t, "attention_backward_q dq", resQ.f32(0), dqc, 1e-5)
		resKV := launch(t, "attention_backward_kv", B*NKV*T, 64, append([]arg{inout(dk0), inout(dv0), in(resQ.f32(1)), in(P), in(q), in(do)}, dims...)...)
		closeTo(t, "attention_backward_kv dk", resKV.f32(0), dkc, 1e-5)
		closeTo(t, "attention_backward_kv dv", resKV.f32(1), dvc, 1e-5)
	}
}

func checkEmbeddingBackward(t *testing.T) {
	r := rand.New(rand.NewPCG(18, 18))
	V, C, N := 30, 300, 40
	ids := tokens(r, N, V) // 40 tokens over 30 ids: repeats
	dt0, do := randv(r, V*C, 1), randv(r, N*C, 1)
	h := newHost()
	dt := h.up(dt0)
	h.be.EmbeddingBackward(dt, h.up(do), ids, C)
	res := launch(t, "embedding_backward", (C+255)/256, 256, inout(dt0), in(do), in(ints(ids)), i32(N), i32(C))
	closeTo(t, "embedding_backward", res.f32(0), h.down(dt), 1e-6)
}

func checkBiasBackward(t *testing.T) {
	r := rand.New(rand.NewPCG(19, 19))
	N, OC := 77, 300
	dy, db0 := randv(r, N*OC, 1), randv(r, OC, 1)
	h := newHost()
	db := h.up(db0)
	h.be.MatMulBackward(nil, nil, db, h.up(dy), nil, nil, N, 5, OC)
	res := launch(t, "bias_backward", (OC+255)/256, 256, inout(db0), in(dy), i32(N), i32(OC))
	closeTo(t, "bias_backward", res.f32(0), h.down(db), 1e-5)
}

func checkColScale(t *testing.T) {
	r := rand.New(rand.NewPCG(31, 31))
	N, OC := 37, 300
	x, c, b := randv(r, N*OC, 2), randv(r, OC, 1.5), randv(r, OC, 1)
	h := newHost()
	yc, yn := h.be.Alloc(N*OC), h.be.Alloc(N*OC)
	h.be.ColScaleForward(yc, h.up(x), h.up(c), h.up(b), N, OC)
	h.be.ColScaleForward(yn, h.up(x), h.up(c), nil, N, OC)
	res := launch(t, "col_scale", elems(N*OC), 256, out(N*OC), in(x), in(c), in(b), i32(N), i32(OC))
	closeTo(t, "col_scale", res.f32(0), h.down(yc), 0)
	res = launch(t, "col_scale", elems(N*OC), 256, out(N*OC), in(x), in(c), null(), i32(N), i32(OC))
	closeTo(t, "col_scale (bias NULL)", res.f32(0), h.down(yn), 0)
}

func checkColScaleBackward(t *testing.T) {
	r := rand.New(rand.NewPCG(32, 32))
	N, OC := 77, 300
	dy, x, c, dc0 := randv(r, N*OC, 1), randv(r, N*OC, 2), randv(r, OC, 1.5), randv(r, OC, 1)
	h := newHost()
	dx, dc := h.be.Alloc(N*OC), h.up(dc0)
	h.be.ColScaleBackward(dx, dc, h.up(dy), h.up(x), h.up(c), N, OC)
	res := launch(t, "col_scale_backward", (OC+255)/256, 256, out(N*OC), inout(dc0), in(dy), in(x), in(c), i32(N), i32(OC))
	closeTo(t, "col_scale_backward dx", res.f32(0), h.down(dx), 0)
	closeTo(t, "col_scale_backward dc", res.f32(1), h.down(dc), 1e-5) // the CPU sums in float64
}

// refLSE is the float64 logsumexp of every attention row (B, NH, T): log Σ_s exp(q_t·k_s/sqrt(D))
// over the keys query t sees.
func refLSE(q, k []float32, seg []int, B, T, NH, NKV, D int) []float32 {
	lse := make([]float32, B*NH*T)
	for b := 0; b < B; b++ {
		for h := 0; h < NH; h++ {
			kh := h / (NH / NKV)
			for t := 0; t < T; t++ {
				sc := make([]float64, 0, t+1)
				m := math.Inf(-1)
				for s := 0; s <= t; s++ {
					if seg != nil && seg[b*T+s] != seg[b*T+t] {
						continue
					}
					d := 0.0
					for i := 0; i < D; i++ {
						d += float64(q[((b*T+t)*NH+h)*D+i]) * float64(k[((b*T+s)*NKV+kh)*D+i])
					}
					d /= math.Sqrt(float64(D))
					sc = append(sc, d)
					m = max(m, d)
				}
				sum := 0.0
				for _, d := range sc {
					sum += math.Exp(d - m)
				}
				lse[(b*NH+h)*T+t] = float32(m + math.Log(sum))
			}
		}
	}
	return lse
}

// flashShapes adds to attnShapes the ones the tiles make interesting: several query and key
// tiles, GQA groups of 4, the conformance suite's D = 8.
func flashShapes(r *rand.Rand) []attnShape {
	return append(attnShapes(r),
		attnShape{B: 1, T: 100, NH: 8, NKV: 2, D: 32, seg: packedSeg(r, 1, 100)},
		attnShape{B: 2, T: 7, NH: 4, NKV: 2, D: 8},
		attnShape{B: 1, T: 70, NH: 2, NKV: 1, D: 128},
	)
}

// flashGrid is the grid of a flash kernel: one block per (batch, head) and tile of rows.
func flashGrid(B, heads, T, rows int) int { return B * heads * ((T + rows - 1) / rows) }

func checkFlashForward(t *testing.T) {
	r := rand.New(rand.NewPCG(20, 20))
	for _, s := range flashShapes(r) {
		B, T, NH, NKV, D := s.B, s.T, s.NH, s.NKV, s.D
		q, k, v := randv(r, B*T*NH*D, 2), randv(r, B*T*NKV*D, 2), randv(r, B*T*NKV*D, 1)
		h := newHost()
		o, att := h.be.Alloc(B*T*NH*D), h.be.Alloc(B*NH*T*T)
		h.be.AttentionTrainForward(o, att, h.up(q), h.up(k), h.up(v), s.seg, B, T, NH, NKV, D)
		res := launch(t, "flash_attention_forward", flashGrid(B, NH, T, 16), 128, out(B*T*NH*D), out(B*NH*T), in(q), in(k), in(v), segArg(s.seg),
			i32(B), i32(T), i32(NH), i32(NKV), i32(D))
		closeTo(t, "flash_attention_forward out", res.f32(0), h.down(o), 1e-5)
		closeTo(t, "flash_attention_forward lse", res.f32(1), refLSE(q, k, s.seg, B, T, NH, NKV, D), 1e-5)
	}
}

// checkFlashBackward: the flash backward from the flash forward's out and lse gives the CPU
// backend's AttentionBackward (which backendtest checks against finite differences).
func checkFlashBackward(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 21))
	for _, s := range flashShapes(r) {
		B, T, NH, NKV, D := s.B, s.T, s.NH, s.NKV, s.D
		nq, nk := B*T*NH*D, B*T*NKV*D
		q, k, v, do := randv(r, nq, 2), randv(r, nk, 2), randv(r, nk, 1), randv(r, nq, 1)
		dq0, dk0, dv0 := randv(r, nq, 1), randv(r, nk, 1), randv(r, nk, 1)
		_, dqc, dkc, dvc := cpuAttentionGrads(s, q, k, v, do, dq0, dk0, dv0)
		dims := []arg{i32(B), i32(T), i32(NH), i32(NKV), i32(D)}
		fwd := launch(t, "flash_attention_forward", flashGrid(B, NH, T, 16), 128, append([]arg{out(nq), out(B * NH * T), in(q), in(k), in(v), segArg(s.seg)}, dims...)...)
		O, L := fwd.f32(0), fwd.f32(1)
		resQ := launch(t, "flash_attention_backward_q", flashGrid(B, NH, T, 8), 128,
			append([]arg{inout(dq0), out(B * NH * T), in(do), in(O), in(L), in(q), in(k), in(v), segArg(s.seg)}, dims...)...)
		closeTo(t, "flash_attention_backward_q dq", resQ.f32(0), dqc, 1e-5)
		Di := make([]float32, B*NH*T)
		for b := 0; b < B; b++ {
			for hh := 0; hh < NH; hh++ {
				for tt := 0; tt < T; tt++ {
					sum := 0.0
					for i := 0; i < D; i++ {
						j := ((b*T+tt)*NH+hh)*D + i
						sum += float64(do[j]) * float64(O[j])
					}
					Di[(b*NH+hh)*T+tt] = float32(sum)
				}
			}
		}
		closeTo(t, "flash_attention_backward_q Di", resQ.f32(1), Di, 1e-5)
		resKV := launch(t, "flash_attention_backward_kv", flashGrid(B, NKV, T, 8), 128,
			append([]arg{inout(dk0), inout(dv0), in(do), in(L), in(resQ.f32(1)), in(q), in(k), in(v), segArg(s.seg)}, dims...)...)
		closeTo(t, "flash_attention_backward_kv dk", resKV.f32(0), dkc, 1e-5)
		closeTo(t, "flash_attention_backward_kv dv", resKV.f32(1), dvc, 1e-5)
		// Gradients not wanted: dq NULL still writes Di; dk or dv NULL leaves the other right.
		nq0 := launch(t, "flash_attention_backward_q", flashGrid(B, NH, T, 8), 128,
			append([]arg{null(), out(B * NH * T), in(do), in(O), in(L), in(q), in(k), in(v), segArg(s.seg)}, dims...)...)
		closeTo(t, "flash_attention_backward_q Di (dq NULL)", nq0.f32(1), resQ.f32(1), 0)
		onlyV := launch(t, "flash_attention_backward_kv", flashGrid(B, NKV, T, 8), 128,
			append([]arg{null(), inout(dv0), in(do), in(L), in(resQ.f32(1)), in(q), in(k), in(v), segArg(s.seg)}, dims...)...)
		closeTo(t, "flash_attention_backward_kv dv (dk NULL)", onlyV.f32(1), resKV.f32(1), 0)
	}
}
