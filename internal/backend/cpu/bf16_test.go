package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/loractl/loractl/internal/backend"
)

// randBF16 returns n bfloat16 bit patterns of standard-normal values (rounded to nearest even).
func randBF16(r *rand.Rand, n int) []uint16 {
	h := make([]uint16, n)
	for i := range h {
		b := math.Float32bits(float32(r.NormFloat64()))
		h[i] = uint16((b + 0x7FFF + (b>>16)&1) >> 16)
	}
	return h
}

// widen returns the float32 values of h.
func widen(h []uint16) []float32 {
	f := make([]float32, len(h))
	for i, v := range h {
		f[i] = math.Float32frombits(uint32(v) << 16)
	}
	return f
}

// bf16Buf uploads h into a fresh BF16 buffer.
func bf16Buf(be *Backend, h []uint16) backend.Buffer {
	b := be.AllocWeight(len(h), backend.BF16)
	if err := be.UploadBF16(b, h); err != nil {
		panic(err)
	}
	return b
}

// sameBits fails t unless got and want are bitwise equal.
func sameBits(t *testing.T, what string, got, want []float32) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	for i := range got {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
			t.Fatalf("%s: index %d: %g (%#08x) with the BF16 weight, %g (%#08x) with F32", what, i,
				got[i], math.Float32bits(got[i]), want[i], math.Float32bits(want[i]))
		}
	}
}

func TestBF16Storage(t *testing.T) {
	be := New()
	b := be.AllocWeight(5, backend.BF16)
	if b.Len() != 5 || be.DTypeOf(b) != backend.BF16 || be.DTypeOf(be.Alloc(3)) != backend.F32 {
		t.Fatalf("Len %d, DTypeOf %s", b.Len(), be.DTypeOf(b))
	}
	if f := be.AllocWeight(4, backend.F32); be.DTypeOf(f) != backend.F32 || f.Len() != 4 {
		t.Fatal("AllocWeight(F32) is not an F32 buffer")
	}
	if got := len(b.(*Buffer).BF16()); got != 5 {
		t.Fatalf("BF16() has %d elements", got)
	}
	// Download widens every bit pattern exactly.
	all := make([]uint16, 1<<16)
	for i := range all {
		all[i] = uint16(i)
	}
	ab := bf16Buf(be, all)
	got := make([]float32, len(all))
	if err := be.Download(got, ab); err != nil {
		t.Fatal(err)
	}
	for i, v := range got {
		if math.Float32bits(v) != uint32(i)<<16 {
			t.Fatalf("Download of %#04x gave %#08x", i, math.Float32bits(v))
		}
	}
	// Errors, not panics, for the transfer calls.
	if err := be.Upload(b, make([]float32, 5)); err == nil || !strings.Contains(err.Error(), "UploadBF16") {
		t.Errorf("Upload into a BF16 buffer: %v", err)
	}
	if err := be.UploadBF16(be.Alloc(5), make([]uint16, 5)); err == nil {
		t.Error("UploadBF16 into an F32 buffer: no error")
	}
	if err := be.UploadBF16(b, make([]uint16, 4)); err == nil {
		t.Error("UploadBF16 of the wrong length: no error")
	}
	if err := be.Download(make([]float32, 4), b); err == nil {
		t.Error("Download of the wrong length: no error")
	}
	be.Free(b)
	if b.Len() != 0 {
		t.Error("Free left storage")
	}
}

// TestBF16MatMul checks MatMulForward and MatMulBackward's dx with a BF16 weight against the
// same ops on an F32 buffer holding the widened weight: bitwise equal, on ragged shapes and
// thread counts, with and without bias.
func TestBF16MatMul(t *testing.T) {
	r := rand.New(rand.NewPCG(31, 32))
	for _, tc := range []struct{ N, C, OC, threads int }{
		{1, 576, 1536, 1}, {1, 64, 513, 2}, {3, 5, 7, 1}, {2, 1, 1, 1}, {33, 96, 70, 2},
		{37, 300, 10, 2}, {64, 300, 257, 2}, {130, 257, 45, 1}, {7, 17, 255, 2},
	} {
		for _, bias := range []bool{false, true} {
			name := fmt.Sprintf("N%d_C%d_OC%d_t%d_bias%v", tc.N, tc.C, tc.OC, tc.threads, bias)
			be := New()
			be.SetThreads(tc.threads)
			N, C, OC := tc.N, tc.C, tc.OC
			h := randBF16(r, OC*C) // (OC, C)
			wh, wf := bf16Buf(be, h), buf(be, widen(h))
			x := buf(be, randn(r, N*C)) // (N, C)
			var bb backend.Buffer
			if bias {
				bb = buf(be, randn(r, OC))
			}
			// Forward: out is overwritten; start from different garbage in both.
			o1, o2 := buf(be, randn(r, N*OC)), buf(be, randn(r, N*OC))
			be.MatMulForward(o1, x, wh, bb, N, C, OC)
			be.MatMulForward(o2, x, wf, bb, N, C, OC)
			sameBits(t, name+" MatMulForward", o1.(*Buffer).Data(), o2.(*Buffer).Data())

			// Backward: dx += dy·w from the same start, dbias alongside.
			dy := buf(be, randn(r, N*OC))
			dx0 := randn(r, N*C)
			dx1, dx2 := buf(be, dx0), buf(be, dx0)
			var db1, db2 backend.Buffer
			if bias {
				db0 := randn(r, OC)
				db1, db2 = buf(be, db0), buf(be, db0)
			}
			be.MatMulBackward(dx1, nil, db1, dy, nil, wh, N, C, OC)
			be.MatMulBackward(dx2, nil, db2, dy, nil, wf, N, C, OC)
			sameBits(t, name+" MatMulBackward dx", dx1.(*Buffer).Data(), dx2.(*Buffer).Data())
			if bias {
				sameBits(t, name+" MatMulBackward dbias", db1.(*Buffer).Data(), db2.(*Buffer).Data())
			}
		}
	}
}

func TestBF16Embedding(t *testing.T) {
	be := New()
	r := rand.New(rand.NewPCG(33, 34))
	for _, C := range []int{1, 7, 8, 64, 577} {
		V := 41
		h := randBF16(r, V*C) // (V, C)
		tokens := make([]int, 23)
		for i := range tokens {
			tokens[i] = r.IntN(V)
		}
		tokens[0], tokens[1] = 0, V-1
		o1, o2 := buf(be, randn(r, len(tokens)*C)), buf(be, randn(r, len(tokens)*C))
		be.EmbeddingForward(o1, bf16Buf(be, h), tokens, C)
		be.EmbeddingForward(o2, buf(be, widen(h)), tokens, C)
		sameBits(t, fmt.Sprintf("EmbeddingForward C=%d", C), o1.(*Buffer).Data(), o2.(*Buffer).Data())
	}
	// A token past the table still panics.
	mustPanic(t, "token id out of range", func() {
		be.EmbeddingForward(be.Alloc(4), bf16Buf(be, randBF16(r, 8)), []int{2}, 4)
	})
}

// mustPanic fails t unless f panics with a message containing want.
func mustPanic(t *testing.T, want string, f func()) {
	t.Helper()
	defer func() {
		t.Helper()
		r := recover()
		if r == nil {
			t.Errorf("no panic, want one containing %q", want)
			return
		}
		if msg := fmt.Sprint(r); !strings.Contains(msg, want) {
			t.Errorf("panic %q, want it to contain %q", msg, want)
		}
	}()
	f()
}

// TestBF16Misuse checks that every op that takes no BF16 buffer panics with a message naming
// the op, and that a gradient for a BF16 weight is refused.
func TestBF16Misuse(t *testing.T) {
	be := New()
	r := rand.New(rand.NewPCG(35, 36))
	const N, C = 4, 8
	h := bf16Buf(be, randBF16(r, N*C)) // (N, C) or (C, C)/… as each op needs
	f := func(n int) backend.Buffer { return buf(be, randn(r, n)) }
	inv := f(C / 2)
	for _, c := range []struct {
		op string
		fn func()
	}{
		{"MatMulForward", func() { be.MatMulForward(f(N*N), h, f(N*C), nil, N, C, N) }},           // x
		{"MatMulForward", func() { be.MatMulForward(h, f(N*C), f(N*C), nil, N, C, N) }},           // out
		{"MatMulForward", func() { be.MatMulForward(f(N*N), f(N*C), f(N*C), h, N, C, N) }},        // bias
		{"frozen", func() { be.MatMulBackward(f(N*C), f(N*C), nil, f(N*N), f(N*C), h, N, C, N) }}, // dw
		{"MatMulBackward", func() { be.MatMulBackward(h, nil, nil, f(N*N), nil, f(N*C), N, C, N) }},
		{"MatMulBackward", func() { be.MatMulBackward(f(N*C), nil, nil, h, nil, f(N*C), N, C, N) }},
		{"EmbeddingForward", func() { be.EmbeddingForward(h, f(N*C), []int{0}, C) }},
		{"RMSNormForward", func() { be.RMSNormForward(f(N*C), f(N*C), h, N, C, 1e-5) }},
		{"RoPEForward", func() { be.RoPEForward(h, inv, 1, N, 1, C, 0) }},
		{"AttentionForward", func() { be.AttentionForward(f(N*C), h, f(N*C), f(N*C), 1, N, N, 0, 1, 1, C) }},
		{"SwiGLUForward", func() { be.SwiGLUForward(f(N*C), h, f(N*C), N*C) }},
		{"AddForward", func() { be.AddForward(f(N*C), f(N*C), h, N*C) }},
		{"Copy", func() { be.Copy(f(N*C), 0, h, 0, C) }},
		{"Zero", func() { be.Zero(h, N*C) }},
		{"Axpy", func() { be.Axpy(h, f(N*C), 1, N*C) }},
		{"CrossEntropyForward", func() { be.CrossEntropyForward(f(N), h, []int{0, 1, 2, 3}, N, C) }},
		{"RMSNormBackward", func() { be.RMSNormBackward(f(N*C), nil, f(N*C), f(N*C), h, N, C, 1e-5) }},
		{"RoPEForwardPos", func() { be.RoPEForwardPos(h, inv, []int{0, 1, 2, 3}, N, 1, C) }},
		{"SwiGLUBackward", func() { be.SwiGLUBackward(f(N*C), f(N*C), f(N*C), h, f(N*C), N*C) }},
		{"EmbeddingBackward", func() { be.EmbeddingBackward(h, f(C), []int{0}, C) }},
		{"AllocWeight", func() { be.AllocWeight(4, backend.F16) }},
		{"Data of a BF16 buffer", func() { h.(*Buffer).Data() }},
	} {
		t.Run(c.op, func(t *testing.T) {
			mustPanic(t, c.op, c.fn)
			mustPanic(t, "BF16", c.fn)
		})
	}
}
