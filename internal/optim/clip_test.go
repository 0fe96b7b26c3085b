package optim

import (
	"math"
	"math/rand/v2"
	"testing"
)

func TestGlobalNormByHand(t *testing.T) {
	// 3-4-5 split across tensors, plus an empty tensor: sqrt(9+16+144) = 13.
	grads := [][]float32{{3}, {}, {0, 4}, {12}}
	if got := GlobalNorm(grads); got != 13 {
		t.Fatalf("GlobalNorm = %g, want 13", got)
	}
}

func TestClipGlobalNorm(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 4))
	grads := [][]float32{make([]float32, 100), make([]float32, 17)}
	for _, g := range grads {
		for i := range g {
			g[i] = float32(rng.NormFloat64())
		}
	}
	orig := [][]float32{append([]float32(nil), grads[0]...), append([]float32(nil), grads[1]...)}
	norm0 := GlobalNorm(grads)

	// Above the norm: nothing changes, bit for bit, and the norm is returned.
	if n := ClipGlobalNorm(grads, norm0*2); n != norm0 || !bitsEqual(grads, orig) {
		t.Fatalf("clipping at twice the norm changed the gradients or returned %g (norm %g)", n, norm0)
	}
	// Disabled.
	if n := ClipGlobalNorm(grads, 0); n != norm0 || !bitsEqual(grads, orig) {
		t.Fatal("maxNorm 0 should not clip")
	}
	// Below the norm: the returned value is the norm before clipping, the new norm is
	// maxNorm·norm/(norm+1e-6), and every element is scaled by the same factor.
	const maxNorm = 1.0
	if n := ClipGlobalNorm(grads, maxNorm); n != norm0 {
		t.Fatalf("ClipGlobalNorm returned %g, want the pre-clip norm %g", n, norm0)
	}
	after := GlobalNorm(grads)
	if want := maxNorm * norm0 / (norm0 + 1e-6); math.Abs(after-want) > 1e-6 {
		t.Fatalf("norm after clipping = %.9g, want %.9g", after, want)
	}
	coef := float32(maxNorm / (norm0 + 1e-6))
	for k := range grads {
		for i := range grads[k] {
			if grads[k][i] != orig[k][i]*coef {
				t.Fatalf("grads[%d][%d] = %g, want %g·%g", k, i, grads[k][i], orig[k][i], coef)
			}
		}
	}
}

func TestClipGlobalNormNonFiniteLeavesGrads(t *testing.T) {
	for _, bad := range []float32{float32(math.NaN()), float32(math.Inf(1))} {
		grads := [][]float32{{1, 2}, {bad}}
		n := ClipGlobalNorm(grads, 1)
		if !math.IsNaN(n) && !math.IsInf(n, 0) {
			t.Fatalf("norm = %g with a %g gradient, want non-finite", n, bad)
		}
		if grads[0][0] != 1 || grads[0][1] != 2 {
			t.Fatalf("gradients changed by a non-finite norm: %v", grads[0])
		}
	}
}

func TestScaleAndZero(t *testing.T) {
	grads := [][]float32{{1, -2}, {4}}
	Scale(grads, 0.25)
	if grads[0][0] != 0.25 || grads[0][1] != -0.5 || grads[1][0] != 1 {
		t.Fatalf("Scale(0.25) = %v", grads)
	}
	Zero(grads)
	if GlobalNorm(grads) != 0 {
		t.Fatalf("Zero left %v", grads)
	}
}

func TestGradsOrder(t *testing.T) {
	a, b, c := []float32{1}, []float32{2}, []float32{3}
	groups := []Group{
		{Params: []Param{{Name: "x", Grad: a}, {Name: "y", Grad: b}}},
		{Params: []Param{{Name: "z", Grad: c}}},
	}
	got := Grads(groups)
	if len(got) != 3 || &got[0][0] != &a[0] || &got[1][0] != &b[0] || &got[2][0] != &c[0] {
		t.Fatal("Grads does not return the gradient slices in group and parameter order")
	}
}
