package cpu

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/loractl/loractl/internal/backend"
	"github.com/loractl/loractl/internal/quant"
)

// TestPackedWeightsMatchF32 checks that every op taking a packed weight gives bitwise the
// results of the same op on an F32 buffer holding the dequantized values.
func TestPackedWeightsMatchF32(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 3))
	randv := func(n int) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(rng.NormFloat64())
		}
		return v
	}
	be := New()
	for _, f := range []quant.Options{{Format: quant.NF4}, {Format: quant.NF4, DoubleQuant: true}, {Format: quant.Int8}, {Format: quant.Int4}} {
		N, C, OC := 1+rng.IntN(40), 16+rng.IntN(300), 8+rng.IntN(200)
		q, err := quant.Quantize("w", randv(OC*C), []int{OC, C}, f)
		if err != nil {
			t.Fatal(err)
		}
		pw, err := be.UploadPacked(q)
		if err != nil {
			t.Fatal(err)
		}
		if be.DTypeOf(pw) != backend.Quantized || be.PackedBytes(pw) != q.Bytes() || pw.Len() != OC*C {
			t.Fatalf("packed buffer: dtype %s, %d bytes, len %d", be.DTypeOf(pw), be.PackedBytes(pw), pw.Len())
		}
		fw := be.Alloc(OC * C)
		if err := be.Upload(fw, q.Dequantize()); err != nil {
			t.Fatal(err)
		}
		down := make([]float32, OC*C)
		if err := be.Download(down, pw); err != nil || !slices.Equal(down, q.Dequantize()) {
			t.Fatalf("%s: Download of a packed buffer differs from Dequantize (%v)", f.Format, err)
		}
		x, dy, bias := randv(N*C), randv(N*OC), randv(OC)
		up := func(v []float32) backend.Buffer {
			b := be.Alloc(len(v))
			if err := be.Upload(b, v); err != nil {
				t.Fatal(err)
			}
			return b
		}
		get := func(b backend.Buffer) []float32 {
			v := make([]float32, b.Len())
			if err := be.Download(v, b); err != nil {
				t.Fatal(err)
			}
			return v
		}
		xb, dyb, bb := up(x), up(dy), up(bias)
		for _, w := range []string{"forward", "forward-acc", "backward-dx"} {
			var res [2][]float32
			for i, wb := range []backend.Buffer{pw, fw} {
				switch w {
				case "forward":
					out := be.Alloc(N * OC)
					be.MatMulForward(out, xb, wb, bb, N, C, OC)
					res[i] = get(out)
				case "forward-acc":
					out := up(dy)
					be.MatMulForwardAcc(out, xb, wb, N, C, OC)
					res[i] = get(out)
				case "backward-dx":
					dx := up(x)
					be.MatMulBackward(dx, nil, nil, dyb, nil, wb, N, C, OC)
					res[i] = get(dx)
				}
			}
			if !slices.Equal(res[0], res[1]) {
				t.Fatalf("%s %s: packed weight differs from the F32 weight of the same values", f.Format, w)
			}
		}
		// Misuse panics, naming the op.
		for op, call := range map[string]func(){
			"MatMulBackward": func() { be.MatMulBackward(nil, be.Alloc(OC*C), nil, dyb, xb, pw, N, C, OC) },
			"RMSNormForward": func() { be.RMSNormForward(be.Alloc(OC*C), pw, be.Alloc(C), OC, C, 1e-5) },
		} {
			msg := func() (m string) {
				defer func() { m, _ = recover().(string) }()
				call()
				return ""
			}()
			if !strings.Contains(msg, op) || !strings.Contains(msg, "packed") && !strings.Contains(msg, "quantized") {
				t.Fatalf("%s with a packed weight: panic %q, want one naming the op and the packed weight", op, msg)
			}
		}
		if err := be.Upload(pw, down); err == nil {
			t.Fatal("Upload into a packed buffer succeeded")
		}
	}
}

// TestPackedProductAllocatesNothing: once warm, a product with a packed weight allocates
// nothing (the scratch and the pool's job are recycled).
func TestPackedProductAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under -race")
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 5))
	N, C, OC := 8, 256, 512
	w := make([]float32, OC*C)
	for i := range w {
		w[i] = float32(rng.NormFloat64())
	}
	q, err := quant.Quantize("w", w, []int{OC, C}, quant.Options{Format: quant.NF4, DoubleQuant: true})
	if err != nil {
		t.Fatal(err)
	}
	be := New()
	pw, _ := be.UploadPacked(q)
	x, out := be.Alloc(N*C), be.Alloc(N*OC)
	be.MatMulForward(out, x, pw, nil, N, C, OC)
	if n := testing.AllocsPerRun(20, func() { be.MatMulForward(out, x, pw, nil, N, C, OC) }); n > 0 {
		t.Fatalf("MatMulForward with a packed weight: %.1f allocations per call, want 0", n)
	}
}
