// Package backendtest is the conformance suite that every backend.Backend passes, in the spirit
// of testing/fstest.TestFS: a backend's test calls
//
//	backendtest.Run(t, func() backend.Backend { return cpu.New() })
//
// Forward ops are compared with naive float64 references (ref.go) on fresh seeded random
// inputs, element by element: |got − want| ≤ atol + rtol·|want|, with per-op tolerances; a
// failure names the op, the index, got and want.
//
// When the backend also implements backend.Trainer, its training forwards are checked the same
// way and every backward op is gradient-checked: the analytic gradient that the backend computes
// in float32 is compared with central finite differences of L = Σ dy·f(inputs), computed IN
// FLOAT64 on the float64 reference forward (so the differences carry no float32 rounding and one
// eps, 1e-5, suits every op). The relative error of element i is
// |got_i − fd_i| / max(|fd_i|, 1e-3·max_j |fd_j|) (the floor keeps near-zero elements of a
// gradient from dominating), and the maximum over all elements must be ≤ 1e-3. Each backward op
// is also run into gradient buffers prefilled with random values, to check that it accumulates
// (+=) as documented. A composite check (chain.go) then runs a one-layer transformer with a
// LoRA adapter, composed from the backend's ops, forward and backward, and checks its gradients
// against finite differences of the same chain composed from the references.
//
// Run logs a table (op, shape, max abs err, max rel err) with t.Logf; see it with go test -v.
package backendtest

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/loractl/loractl/internal/backend"
)

// gradRelTol is the largest relative error allowed between an analytic gradient and its finite
// difference.
const gradRelTol = 1e-3

// fdEps is the step of the float64 central differences.
const fdEps = 1e-5

// Run runs the suite on backends made by newBackend (called once per check, so that no state
// carries over).
func Run(t *testing.T, newBackend func() backend.Backend) {
	rep := &report{}
	t.Run("forward", func(t *testing.T) { runForward(t, newBackend, rep) })
	if _, ok := newBackend().(backend.Trainer); !ok {
		t.Logf("%s does not implement backend.Trainer: training ops not checked", newBackend().Name())
	} else {
		t.Run("train", func(t *testing.T) { runTrain(t, newBackend, rep) })
		t.Run("chain", func(t *testing.T) { runChain(t, newBackend, rep) })
	}
	t.Logf("backend %s:\n%s", newBackend().Name(), rep)
}

// report collects one row per checked tensor for the summary table.
type report struct {
	rows []reportRow
}

type reportRow struct {
	op, shape      string
	maxAbs, maxRel float64
}

func (r *report) add(op, shape string, maxAbs, maxRel float64) {
	r.rows = append(r.rows, reportRow{op, shape, maxAbs, maxRel})
}

// String formats the table.
func (r *report) String() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "%-38s %-42s %11s %11s\n", "op", "shape", "max abs err", "max rel err")
	for _, w := range r.rows {
		fmt.Fprintf(&sb, "%-38s %-42s %11.3g %11.3g\n", w.op, w.shape, w.maxAbs, w.maxRel)
	}
	return sb.String()
}

// errStats returns the largest |got − want| and the largest relative error
// |got − want| / max(|want|, 1e-3·max|want|).
func errStats(got []float32, want []float64) (maxAbs, maxRel float64) {
	scale := 0.0
	for _, w := range want {
		scale = max(scale, math.Abs(w))
	}
	floor := max(1e-3*scale, 1e-30)
	for i, w := range want {
		d := math.Abs(float64(got[i]) - w)
		if math.IsNaN(d) {
			return math.NaN(), math.NaN()
		}
		maxAbs = max(maxAbs, d)
		maxRel = max(maxRel, d/max(math.Abs(w), floor))
	}
	return maxAbs, maxRel
}

// checkClose fails t unless |got − want| ≤ atol + rtol·|want| everywhere, reporting the first
// few mismatches, and records the row in rep.
func checkClose(t *testing.T, rep *report, op, shape string, got []float32, want []float64, atol, rtol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: got %d values, want %d", op, len(got), len(want))
	}
	bad := 0
	for i := range want {
		d := math.Abs(float64(got[i]) - want[i])
		if !(d <= atol+rtol*math.Abs(want[i])) {
			if bad < 5 {
				t.Errorf("%s %s: index %d: got %.9g, want %.9g (|diff| %.3g)", op, shape, i, got[i], want[i], d)
			}
			bad++
		}
	}
	maxAbs, maxRel := errStats(got, want)
	if bad > 0 {
		t.Errorf("%s %s: %d of %d values out of tolerance (atol %g, rtol %g), max |diff| %.3g", op, shape, bad, len(want), atol, rtol, maxAbs)
	}
	rep.add(op, shape, maxAbs, maxRel)
}

// checkGrad fails t unless the analytic gradient got matches the finite difference fd with a
// maximum relative error (see errStats) ≤ gradRelTol, and records the row in rep.
func checkGrad(t *testing.T, rep *report, op, shape string, got []float32, fd []float64) {
	t.Helper()
	if len(got) != len(fd) {
		t.Fatalf("%s: got %d gradient values, want %d", op, len(got), len(fd))
	}
	maxAbs, maxRel := errStats(got, fd)
	rep.add(op, shape, maxAbs, maxRel)
	if maxRel <= gradRelTol {
		return
	}
	scale := 0.0
	for _, w := range fd {
		scale = max(scale, math.Abs(w))
	}
	bad := 0
	for i, w := range fd {
		d := math.Abs(float64(got[i]) - w)
		if !(d <= gradRelTol*max(math.Abs(w), 1e-3*scale)) && bad < 5 {
			t.Errorf("%s %s: index %d: analytic %.9g, finite difference %.9g", op, shape, i, got[i], w)
			bad++
		}
	}
	t.Errorf("%s %s: max relative error %.3g > %g (max abs %.3g)", op, shape, maxRel, gradRelTol, maxAbs)
}

// randn returns n seeded normal values of standard deviation std, rounded to float32.
func randn(r *rand.Rand, n int, std float64) []float32 {
	s := make([]float32, n) // (n,)
	for i := range s {
		s[i] = float32(std * r.NormFloat64())
	}
	return s
}

// f64 widens s to float64.
func f64(s []float32) []float64 {
	d := make([]float64, len(s)) // (n,)
	for i, v := range s {
		d[i] = float64(v)
	}
	return d
}

// upload returns a new buffer of be holding s.
func upload(t *testing.T, be backend.Backend, s []float32) backend.Buffer {
	t.Helper()
	b := be.Alloc(len(s))
	if err := be.Upload(b, s); err != nil {
		t.Fatal(err)
	}
	return b
}

// download returns the contents of b.
func download(t *testing.T, be backend.Backend, b backend.Buffer) []float32 {
	t.Helper()
	s := make([]float32, b.Len()) // (n,)
	if err := be.Download(s, b); err != nil {
		t.Fatal(err)
	}
	return s
}

// seededRand returns the generator of one check; each check has its own seed.
func seededRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 0x10_4c_7c)) }

// ropeInvFreq returns Llama's inverse frequencies θ^(−2i/D) for i < D/2, in float32.
func ropeInvFreq(D int, theta float64) []float32 {
	inv := make([]float32, D/2) // (D/2,)
	for i := range inv {
		inv[i] = float32(1 / math.Pow(theta, float64(2*i)/float64(D)))
	}
	return inv
}

// runForward checks the forward ops of the Backend interface.
func runForward(t *testing.T, newBackend func() backend.Backend, rep *report) {
	t.Run("Embedding", func(t *testing.T) {
		be, r := newBackend(), seededRand(1)
		V, C := 13, 6
		tokens := []int{3, 0, 12, 3, 7}
		table := randn(r, V*C, 1) // (V, C)
		out := be.Alloc(len(tokens) * C)
		be.EmbeddingForward(out, upload(t, be, table), tokens, C)
		checkClose(t, rep, "EmbeddingForward", "V=13 C=6 N=5", download(t, be, out), refEmbedding(f64(table), tokens, C), 0, 0)
	})
	t.Run("RMSNorm", func(t *testing.T) {
		be, r := newBackend(), seededRand(2)
		N, C := 5, 24
		x := randn(r, N*C, 2) // (N, C)
		w := randn(r, C, 1)   // (C,)
		out := be.Alloc(N * C)
		be.RMSNormForward(out, upload(t, be, x), upload(t, be, w), N, C, 1e-5)
		checkClose(t, rep, "RMSNormForward", "N=5 C=24", download(t, be, out), refRMSNorm(f64(x), f64(w), N, C, 1e-5), 1e-6, 1e-5)
	})
	t.Run("MatMul", func(t *testing.T) {
		be, r := newBackend(), seededRand(3)
		N, C, OC := 7, 19, 11
		x := randn(r, N*C, 1)  // (N, C)
		w := randn(r, OC*C, 1) // (OC, C)
		b := randn(r, OC, 1)   // (OC,)
		out := be.Alloc(N * OC)
		be.MatMulForward(out, upload(t, be, x), upload(t, be, w), upload(t, be, b), N, C, OC)
		checkClose(t, rep, "MatMulForward", "N=7 C=19 OC=11 bias", download(t, be, out), refMatMul(f64(x), f64(w), f64(b), N, C, OC), 1e-5, 1e-5)
		be.MatMulForward(out, upload(t, be, x), upload(t, be, w), nil, N, C, OC)
		checkClose(t, rep, "MatMulForward", "N=7 C=19 OC=11", download(t, be, out), refMatMul(f64(x), f64(w), nil, N, C, OC), 1e-5, 1e-5)
	})
	t.Run("RoPE", func(t *testing.T) {
		be, r := newBackend(), seededRand(4)
		B, T, NH, D, pos0 := 2, 3, 3, 8, 5
		x := randn(r, B*T*NH*D, 1) // (B, T, NH, D)
		inv := ropeInvFreq(D, 10000)
		pos := make([]int, B*T) // (B·T,)
		for i := range pos {
			pos[i] = pos0 + i%T
		}
		xb := upload(t, be, x)
		be.RoPEForward(xb, upload(t, be, inv), B, T, NH, D, pos0)
		checkClose(t, rep, "RoPEForward", "B=2 T=3 NH=3 D=8 pos0=5", download(t, be, xb), refRoPE(f64(x), inv, pos, B*T, NH, D), 1e-6, 1e-5)
	})
	t.Run("Attention", func(t *testing.T) {
		be, r := newBackend(), seededRand(5)
		B, T, S, pos0, NH, NKV, D := 2, 3, 6, 2, 4, 2, 8
		q := randn(r, B*T*NH*D, 1)  // (B, T, NH·D)
		k := randn(r, B*S*NKV*D, 1) // (B, S, NKV·D), rows pos0+T.. unused
		v := randn(r, B*S*NKV*D, 1) // (B, S, NKV·D)
		out := be.Alloc(B * T * NH * D)
		be.AttentionForward(out, upload(t, be, q), upload(t, be, k), upload(t, be, v), B, T, S, pos0, NH, NKV, D)
		want, _ := refAttention(f64(q), f64(k), f64(v), B, T, S, NH, NKV, D, func(b, t, s int) bool { return s <= pos0+t })
		checkClose(t, rep, "AttentionForward", "B=2 T=3 S=6 pos0=2 NH=4 NKV=2 D=8", download(t, be, out), want, 1e-5, 1e-4)
	})
	t.Run("SwiGLU", func(t *testing.T) {
		be, r := newBackend(), seededRand(6)
		N := 37
		g, u := randn(r, N, 3), randn(r, N, 1) // (N,), (N,)
		out := be.Alloc(N)
		be.SwiGLUForward(out, upload(t, be, g), upload(t, be, u), N)
		checkClose(t, rep, "SwiGLUForward", "N=37", download(t, be, out), refSwiGLU(f64(g), f64(u)), 1e-6, 1e-5)
	})
	t.Run("Add", func(t *testing.T) {
		be, r := newBackend(), seededRand(7)
		N := 29
		a, b := randn(r, N, 1), randn(r, N, 1) // (N,), (N,)
		out := be.Alloc(N)
		be.AddForward(out, upload(t, be, a), upload(t, be, b), N)
		checkClose(t, rep, "AddForward", "N=29", download(t, be, out), refAdd(f64(a), f64(b)), 1e-7, 1e-6)
	})
}

// poison returns n NaNs: the initial contents of an output buffer, so that an element an op
// forgets to write fails the comparison.
func poison(n int) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = float32(math.NaN())
	}
	return s
}

// sameBits fails unless got and want are bitwise equal.
func sameBits(t *testing.T, what string, got, want []float32) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d elements, want %d", what, len(got), len(want))
	}
	for i := range got {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
			t.Fatalf("%s: index %d: %g, want %g bit for bit", what, i, got[i], want[i])
		}
	}
}
