//go:build cuda

package cuda

import (
	"math"
	"math/rand/v2"
	"os"
	"testing"

	"github.com/loractl/loractl/internal/backend"
	"github.com/loractl/loractl/internal/backend/backendtest"
	"github.com/loractl/loractl/internal/backend/cpu"
	"github.com/loractl/loractl/internal/optim"
	"github.com/loractl/loractl/internal/safetensors"
)

// The twins: every kernel of elementwise.cu against the CPU backend op it mirrors, on fresh
// random inputs, with outputs poisoned (NaN) first so an unwritten element fails. These run
// only where a GPU is usable (scripts/gpu-check.sh runs them on the lent machine).

// gpu opens cuda:0 or skips the test with the reason (fails it instead with
// LORACTL_REQUIRE_GPU=1, which scripts/gpu-check.sh sets on the GPU machine).
func gpu(t *testing.T) *Context {
	t.Helper()
	if r := Probe(); !r.Usable() {
		if os.Getenv("LORACTL_REQUIRE_GPU") == "1" {
			t.Fatalf("no usable GPU: %s", r.Err)
		}
		t.Skipf("no usable GPU: %s", r.Err)
	}
	c, err := Open(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func randv(r *rand.Rand, n int, scale float32) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = (r.Float32()*2 - 1) * scale
	}
	return x
}

// dev uploads x (nil: n poisoned floats) and returns the block.
func dev(t *testing.T, c *Context, x []float32, n int) Ptr {
	t.Helper()
	if x != nil {
		n = len(x)
	}
	p, err := c.Alloc(4 * max(n, 1))
	if err != nil {
		t.Fatal(err)
	}
	if x != nil {
		err = c.UploadF32(p, x)
	} else {
		err = c.Memset32(p, 0x7fc00000, n)
	}
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func devI32(t *testing.T, c *Context, v []int) Ptr {
	t.Helper()
	x := make([]float32, len(v))
	for i, id := range v {
		x[i] = math.Float32frombits(uint32(int32(id)))
	}
	return dev(t, c, x, 0)
}

func get(t *testing.T, c *Context, p Ptr, n int) []float32 {
	t.Helper()
	if err := c.Sync(); err != nil {
		t.Fatal(err)
	}
	x := make([]float32, n)
	if err := c.DownloadF32(x, p); err != nil {
		t.Fatal(err)
	}
	return x
}

func launch(t *testing.T, c *Context, fn string, grid, block int, args ...any) {
	t.Helper()
	if err := c.Launch(fn, grid, block, 0, args...); err != nil {
		t.Fatal(err)
	}
}

// cpuRun uploads host slices to a CPU backend, runs f and downloads buffer out.
type cpuBufs struct {
	be *cpu.Backend
}

func (b cpuBufs) up(x []float32) backend.Buffer {
	buf := b.be.Alloc(len(x))
	b.be.Upload(buf, x)
	return buf
}

func (b cpuBufs) down(buf backend.Buffer) []float32 {
	x := make([]float32, buf.Len())
	b.be.Download(x, buf)
	return x
}

// close fails unless |got−want| ≤ tol·(|want| + 1e-3·max|want|) everywhere (and no NaN).
func closeTo(t *testing.T, what string, got, want []float32, tol float64) {
	t.Helper()
	var scale float64
	for _, w := range want {
		scale = max(scale, math.Abs(float64(w)))
	}
	for i := range want {
		g, w := float64(got[i]), float64(want[i])
		if math.IsNaN(g) || math.Abs(g-w) > tol*(math.Abs(w)+1e-3*scale) {
			t.Fatalf("%s: [%d] = %g, CPU gives %g", what, i, g, w)
		}
	}
}

func TestKernelRMSNorm(t *testing.T) {
	c := gpu(t)
	r := rand.New(rand.NewPCG(1, 1))
	N, C := 7, 300
	eps := float32(1e-5)
	x, w, dy := randv(r, N*C, 2), randv(r, C, 1), randv(r, N*C, 1)
	dx0, dw0 := randv(r, N*C, 1), randv(r, C, 1)
	h := cpuBufs{cpu.New()}
	out := h.be.Alloc(N * C)
	h.be.RMSNormForward(out, h.up(x), h.up(w), N, C, eps)
	dxc, dwc := h.up(dx0), h.up(dw0)
	h.be.RMSNormBackward(dxc, dwc, h.up(dy), h.up(x), h.up(w), N, C, eps)

	px, pw, pdy := dev(t, c, x, 0), dev(t, c, w, 0), dev(t, c, dy, 0)
	po, pr := dev(t, c, nil, N*C), dev(t, c, nil, N)
	launch(t, c, "rmsnorm_forward", N, 256, po, px, pw, int32(N), int32(C), eps)
	closeTo(t, "rmsnorm_forward", get(t, c, po, N*C), h.down(out), 1e-5)
	pdx, pdw := dev(t, c, dx0, 0), dev(t, c, dw0, 0)
	launch(t, c, "rmsnorm_backward_rows", N, 256, pdx, pr, pdy, px, pw, int32(N), int32(C), eps)
	launch(t, c, "rmsnorm_backward_dw", (C+255)/256, 256, pdw, pdy, px, pr, int32(N), int32(C))
	closeTo(t, "rmsnorm_backward dx", get(t, c, pdx, N*C), h.down(dxc), 1e-5)
	closeTo(t, "rmsnorm_backward dw", get(t, c, pdw, C), h.down(dwc), 1e-5)
}

func TestKernelSwiGLU(t *testing.T) {
	c := gpu(t)
	r := rand.New(rand.NewPCG(2, 2))
	N := 1000
	g, u, do := randv(r, N, 6), randv(r, N, 2), randv(r, N, 1)
	dg0, du0 := randv(r, N, 1), randv(r, N, 1)
	h := cpuBufs{cpu.New()}
	out := h.be.Alloc(N)
	h.be.SwiGLUForward(out, h.up(g), h.up(u), N)
	dgc, duc := h.up(dg0), h.up(du0)
	h.be.SwiGLUBackward(dgc, duc, h.up(do), h.up(g), h.up(u), N)

	pg, pu, pdo, po := dev(t, c, g, 0), dev(t, c, u, 0), dev(t, c, do, 0), dev(t, c, nil, N)
	launch(t, c, "swiglu_forward", 4, 256, po, pg, pu, int64(N))
	closeTo(t, "swiglu_forward", get(t, c, po, N), h.down(out), 1e-5)
	pdg, pdu := dev(t, c, dg0, 0), dev(t, c, du0, 0)
	launch(t, c, "swiglu_backward", 4, 256, pdg, pdu, pdo, pg, pu, int64(N))
	closeTo(t, "swiglu_backward dg", get(t, c, pdg, N), h.down(dgc), 1e-5)
	closeTo(t, "swiglu_backward du", get(t, c, pdu, N), h.down(duc), 1e-5)
}

func TestKernelRoPE(t *testing.T) {
	c := gpu(t)
	r := rand.New(rand.NewPCG(3, 3))
	N, NH, D := 9, 3, 16
	x := randv(r, N*NH*D, 1)
	inv := make([]float32, D/2)
	for i := range inv {
		inv[i] = float32(math.Pow(10000, -2*float64(i)/float64(D)))
	}
	pos := []int{0, 1, 2, 3, 0, 1, 2, 40, 41}
	h := cpuBufs{cpu.New()}
	xc := h.up(x)
	h.be.RoPEForwardPos(xc, h.up(inv), pos, N, NH, D)
	px := dev(t, c, x, 0)
	launch(t, c, "rope_pos", 2, 256, px, dev(t, c, inv, 0), devI32(t, c, pos), int32(N), int32(NH), int32(D), float32(1))
	closeTo(t, "rope_pos", get(t, c, px, N*NH*D), h.down(xc), 1e-5)
}

func TestKernelCrossEntropy(t *testing.T) {
	c := gpu(t)
	r := rand.New(rand.NewPCG(4, 4))
	N, V := 5, 3000
	logits := randv(r, N*V, 8)
	targets := []int{7, backend.IgnoreIndex, 2999, 0, 1500}
	scale := float32(0.25)
	h := cpuBufs{cpu.New()}
	lc, dc := h.be.Alloc(N), h.be.Alloc(N*V)
	h.be.CrossEntropyForwardBackward(lc, dc, h.up(logits), targets, N, V, scale)

	pl, pd, plog := dev(t, c, nil, N), dev(t, c, nil, N*V), dev(t, c, logits, 0)
	launch(t, c, "cross_entropy", N, 256, pl, pd, plog, devI32(t, c, targets), int32(N), int32(V), scale)
	closeTo(t, "cross_entropy losses", get(t, c, pl, N), h.down(lc), 1e-5)
	closeTo(t, "cross_entropy dlogits", get(t, c, pd, N*V), h.down(dc), 1e-5)
	// In place: dlogits = logits.
	launch(t, c, "cross_entropy", N, 256, pl, plog, plog, devI32(t, c, targets), int32(N), int32(V), scale)
	closeTo(t, "cross_entropy in place", get(t, c, plog, N*V), h.down(dc), 1e-5)
}

func TestKernelElementwise(t *testing.T) {
	c := gpu(t)
	r := rand.New(rand.NewPCG(5, 5))
	N := 1234
	a, b := randv(r, N, 3), randv(r, N, 3)
	py, px := dev(t, c, a, 0), dev(t, c, b, 0)
	launch(t, c, "axpy", 8, 256, py, px, float32(-0.5), int64(N))
	want := make([]float32, N)
	for i := range want {
		want[i] = a[i] + -0.5*b[i]
	}
	closeTo(t, "axpy", get(t, c, py, N), want, 1e-6)
	launch(t, c, "scale", 8, 256, px, float32(3), int64(N))
	for i := range want {
		want[i] = b[i] * 3
	}
	closeTo(t, "scale", get(t, c, px, N), want, 0)

	// Casts: float32 → bfloat16 rounds to nearest even exactly as the safetensors codec does.
	special := append(randv(r, N, 100), float32(math.Inf(1)), float32(math.NaN()), 0, -0, 1e-40)
	ps := dev(t, c, special, 0)
	ph, _ := c.Alloc(2 * len(special))
	launch(t, c, "cast_f32_bf16", 8, 256, ph, ps, int64(len(special)))
	c.Sync()
	bits := make([]uint16, len(special))
	if err := c.DownloadU16(bits, ph); err != nil {
		t.Fatal(err)
	}
	for i, v := range special {
		w := safetensors.Float32ToBF16(v)
		if bits[i] != w && !(v != v && bits[i]&0x7fff > 0x7f80) {
			t.Fatalf("cast_f32_bf16(%g) = %#x, want %#x", v, bits[i], w)
		}
	}
	pf := dev(t, c, nil, len(special))
	launch(t, c, "cast_bf16_f32", 8, 256, pf, ph, int64(len(special)))
	for i, v := range get(t, c, pf, len(special)) {
		if math.Float32bits(v) != uint32(bits[i])<<16 {
			t.Fatalf("cast_bf16_f32(%#x) = %g", bits[i], v)
		}
	}
}

// TestKernelAdamW: the fused kernel gives the bits of internal/optim's AdamW step.
func TestKernelAdamW(t *testing.T) {
	c := gpu(t)
	r := rand.New(rand.NewPCG(6, 6))
	N := 777
	x, g := randv(r, N, 1), randv(r, N, 0.1)
	cfg := optim.DefaultAdamW()
	cfg.WeightDecay = 0.01
	host := append([]float32(nil), x...)
	opt, err := optim.NewAdamW(cfg, []optim.Group{{Params: []optim.Param{{Name: "p", Data: host, Grad: g}}, LRScale: 1}})
	if err != nil {
		t.Fatal(err)
	}
	lr := 1e-3
	opt.Step(lr)
	// The scalars exactly as AdamW.Step forms them for step 1.
	bc1 := 1 - math.Pow(cfg.Beta1, 1)
	w1 := float32(1 - cfg.Beta1)
	px, pg, pm, pv := dev(t, c, x, 0), dev(t, c, g, 0), dev(t, c, make([]float32, N), 0), dev(t, c, make([]float32, N), 0)
	launch(t, c, "adamw", 4, 256, px, pg, pm, pv, int64(N), float32(1-lr*cfg.WeightDecay), w1, 1-w1,
		float32(cfg.Beta2), float32(1-cfg.Beta2), float32(cfg.Eps), float32(math.Sqrt(1-math.Pow(cfg.Beta2, 1))), float32(-(lr / bc1)))
	got := get(t, c, px, N)
	for i := range got {
		if math.Float32bits(got[i]) != math.Float32bits(host[i]) {
			t.Fatalf("adamw: x[%d] = %g, internal/optim gives %g", i, got[i], host[i])
		}
	}
}

// TestCuBLASProducts: the three row-major products through cuBLAS against the CPU backend's
// MatMulForward / MatMulBackward, on ragged shapes.
func TestCuBLASProducts(t *testing.T) {
	c := gpu(t)
	r := rand.New(rand.NewPCG(7, 7))
	N, C, OC := 37, 29, 19
	x, w, dy := randv(r, N*C, 1), randv(r, OC*C, 1), randv(r, N*OC, 1)
	dx0, dw0 := randv(r, N*C, 1), randv(r, OC*C, 1)
	h := cpuBufs{cpu.New()}
	y := h.be.Alloc(N * OC)
	h.be.MatMulForward(y, h.up(x), h.up(w), nil, N, C, OC)
	dxc, dwc := h.up(dx0), h.up(dw0)
	h.be.MatMulBackward(dxc, dwc, nil, h.up(dy), h.up(x), h.up(w), N, C, OC)

	px, pw, pdy, py := dev(t, c, x, 0), dev(t, c, w, 0), dev(t, c, dy, 0), dev(t, c, nil, N*OC)
	if err := c.MatMulNT(py, px, pw, N, C, OC, false); err != nil {
		t.Fatal(err)
	}
	closeTo(t, "MatMulNT", get(t, c, py, N*OC), h.down(y), 1e-5)
	pdx, pdw := dev(t, c, dx0, 0), dev(t, c, dw0, 0)
	if err := c.MatMulNN(pdx, pdy, pw, N, C, OC); err != nil {
		t.Fatal(err)
	}
	if err := c.MatMulTN(pdw, pdy, px, N, C, OC); err != nil {
		t.Fatal(err)
	}
	closeTo(t, "MatMulNN", get(t, c, pdx, N*C), h.down(dxc), 1e-5)
	closeTo(t, "MatMulTN", get(t, c, pdw, OC*C), h.down(dwc), 1e-5)
}

// TestConformance runs the backend conformance suite (forward ops so far) on the GPU against
// float64 references, as the CPU backend does.
func TestConformance(t *testing.T) {
	gpu(t)
	be, err := New(0)
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	backendtest.Run(t, func() backend.Backend { return be })
}
