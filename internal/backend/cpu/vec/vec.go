// Package vec holds the vectorised loops over float32 rows that the CPU backend's non-GEMM ops
// spend their time in: the maximum of a row, exp-and-sum (softmax, cross-entropy), SwiGLU and its
// gradient, dot products, axpy and scaling. On amd64 with AVX2+FMA they run in Go assembly,
// eight lanes at a time; everywhere else (and for LORACTL_VEC=go) the pure-Go loops below run.
//
// Determinism: every routine's result depends only on its inputs and their length, never on
// where the slice starts in a larger array or on the thread that runs it, so the backend's
// "same bits for any thread count" contract holds.
//
// The exponential is the Cephes single-precision approximation (range reduction by ln 2 in two
// parts, a degree-6 polynomial, exponent bits added directly): relative error below 2e-7 on
// [-87, 88]. Inputs below -87 give 0 (e^-87 ≈ 1.6e-38, the bottom of the normal range), inputs
// above 88 give e^88; NaN stays NaN.
package vec

import (
	"math"
	"os"
)

// useAsm reports whether the assembly routines run (amd64 with AVX2 and FMA, LORACTL_VEC≠go).
var useAsm = hasAsm() && os.Getenv("LORACTL_VEC") != "go"

// Impl returns "avx2" or "go": the implementation in use.
func Impl() string {
	if useAsm {
		return "avx2"
	}
	return "go"
}

// SetImpl selects "avx2" (when the CPU has it) or "go" and returns the previous choice. For
// tests and benchmarks; not safe to call concurrently with the routines.
func SetImpl(name string) (prev string) {
	prev = Impl()
	useAsm = name == "avx2" && hasAsm()
	return prev
}

// Max returns the largest element of x: NaN if any element is NaN, -Inf if x is empty.
func Max(x []float32) float32 {
	n8 := len(x) &^ 7
	m := float32(math.Inf(-1))
	if useAsm && n8 > 0 {
		m = maxAVX2(&x[0], n8)
	} else {
		for _, v := range x[:n8] {
			if v != v {
				return v
			}
			m = max(m, v)
		}
	}
	for _, v := range x[n8:] {
		if v != v {
			return v
		}
		m = max(m, v)
	}
	return m
}

// ExpSum sets dst[i] = exp((x[i] − shift)·scale) for i < len(x) and returns their sum, formed in
// float64. dst must hold len(x) elements; it may be x itself.
func ExpSum(dst, x []float32, shift, scale float32) float64 {
	n := len(x)
	dst = dst[:n]
	n8 := n &^ 7
	var sum float64
	if useAsm {
		if n8 > 0 {
			sum = expSumAVX2(&dst[0], &x[0], n8, shift, scale)
		}
		if n > n8 {
			// The tail through the same 8-lane routine, padded with copies of the last element.
			var buf [8]float32
			copy(buf[:], x[n8:])
			for i := n - n8; i < 8; i++ {
				buf[i] = x[n-1]
			}
			expSumAVX2(&buf[0], &buf[0], 8, shift, scale)
			for i, v := range buf[:n-n8] {
				dst[n8+i] = v
				sum += float64(v)
			}
		}
		return sum
	}
	for i, v := range x {
		e := Exp((v - shift) * scale)
		dst[i] = e
		sum += float64(e)
	}
	return sum
}

// Exp returns e^x with the approximation of ExpSum (the pure-Go twin of the assembly lanes).
func Exp(x float32) float32 {
	const (
		hi, lo = 88.0, -87.0
		log2e  = 1.44269504088896341
		c1, c2 = 0.693359375, -2.12194440e-4
	)
	if x != x {
		return x
	}
	if x < lo {
		return 0
	}
	x = min(x, hi)
	fx := float32(math.RoundToEven(float64(x * log2e)))
	x -= fx * c1
	x -= fx * c2
	y := float32(1.9875691500e-4)
	y = y*x + 1.3981999507e-3
	y = y*x + 8.3334519073e-3
	y = y*x + 4.1665795894e-2
	y = y*x + 1.6666665459e-1
	y = y*x + 5.0000001201e-1
	y = y*(x*x) + x + 1
	return y * math.Float32frombits(uint32(int32(fx)+127)<<23)
}

// Dot returns Σ a[i]·b[i] over len(a) elements (b must hold as many).
func Dot(a, b []float32) float32 {
	n := len(a)
	b = b[:n]
	n8 := n &^ 7
	var s float32
	if useAsm && n8 > 0 {
		s = dotAVX2(&a[0], &b[0], n8)
	} else {
		var acc [8]float32
		for i := 0; i < n8; i += 8 {
			for l := range acc {
				acc[l] += a[i+l] * b[i+l]
			}
		}
		s = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
	}
	for i := n8; i < n; i++ {
		s += a[i] * b[i]
	}
	return s
}

// Axpy computes y[i] += a·x[i] for i < len(y) (x must hold as many).
func Axpy(y, x []float32, a float32) {
	n := len(y)
	x = x[:n]
	n8 := n &^ 7
	if useAsm && n8 > 0 {
		axpyAVX2(&y[0], &x[0], n8, a)
	} else {
		for i := range y[:n8] {
			y[i] += a * x[i]
		}
	}
	for i := n8; i < n; i++ {
		y[i] += a * x[i]
	}
}

// Scale computes x[i] *= a.
func Scale(x []float32, a float32) {
	n8 := len(x) &^ 7
	if useAsm && n8 > 0 {
		scaleAVX2(&x[0], n8, a)
	} else {
		for i := range x[:n8] {
			x[i] *= a
		}
	}
	for i := n8; i < len(x); i++ {
		x[i] *= a
	}
}

// Sigmoid returns σ(x) = 1/(1 + exp(−x)) with Exp and a true division: the pure-Go twin of the
// lanes of SwiGLU and SwiGLUBackward. σ(x) is 1 for x > 87, about 6e-39 (a subnormal) for x < −88.
func Sigmoid(x float32) float32 {
	return 1 / (1 + Exp(-x))
}

// SwiGLU sets out[i] = (g[i]·σ(g[i]))·u[i] for i < len(g), σ as Sigmoid, each product rounded to
// float32 on its own. out and u must hold len(g) elements; out may be g or u itself (not
// otherwise overlap them). The result of each element depends only on g[i] and u[i].
func SwiGLU(out, g, u []float32) {
	n := len(g)
	out, u = out[:n], u[:n]
	n8 := n &^ 7
	if !useAsm {
		for i, x := range g {
			out[i] = float32(x*Sigmoid(x)) * u[i]
		}
		return
	}
	if n8 > 0 {
		swigluAVX2(&out[0], &g[0], &u[0], n8)
	}
	if n > n8 {
		// The tail through the same 8-lane routine, zero-padded.
		var gb, ub [8]float32
		copy(gb[:], g[n8:])
		copy(ub[:], u[n8:])
		swigluAVX2(&gb[0], &gb[0], &ub[0], 8)
		copy(out[n8:], gb[:n-n8])
	}
}

// SwiGLUBackward is the gradient of SwiGLU for i < len(g), with s = σ(g[i]) as Sigmoid:
//
//	dg[i] += (dout[i]·u[i])·(s·(1 + g[i]·(1 − s)))   unless dg is nil
//	du[i] += dout[i]·(g[i]·s)                          unless du is nil
//
// each operation rounded to float32 on its own (the explicit conversions in the Go twin keep
// compilers from fusing multiply-adds). dout, u and the non-nil dg, du must hold len(g)
// elements and not overlap dg or du.
func SwiGLUBackward(dg, du, dout, g, u []float32) {
	n := len(g)
	if dg == nil && du == nil {
		return
	}
	dout, u = dout[:n], u[:n]
	if dg != nil {
		dg = dg[:n]
	}
	if du != nil {
		du = du[:n]
	}
	if !useAsm {
		for i, x := range g {
			s := Sigmoid(x)
			if dg != nil {
				d := float32(s * float32(1+float32(x*(1-s))))
				dg[i] += float32(float32(dout[i]*u[i]) * d)
			}
			if du != nil {
				du[i] += float32(dout[i] * float32(x*s))
			}
		}
		return
	}
	n8 := n &^ 7
	if n8 > 0 {
		swigluBwdAVX2(first(dg), first(du), &dout[0], &g[0], &u[0], n8)
	}
	if n > n8 {
		// The tail through the same 8-lane routine, zero-padded.
		var b [5][8]float32 // dg, du, dout, g, u
		copy(b[2][:], dout[n8:])
		copy(b[3][:], g[n8:])
		copy(b[4][:], u[n8:])
		var pdg, pdu *float32
		if dg != nil {
			copy(b[0][:], dg[n8:])
			pdg = &b[0][0]
		}
		if du != nil {
			copy(b[1][:], du[n8:])
			pdu = &b[1][0]
		}
		swigluBwdAVX2(pdg, pdu, &b[2][0], &b[3][0], &b[4][0], 8)
		if dg != nil {
			copy(dg[n8:], b[0][:n-n8])
		}
		if du != nil {
			copy(du[n8:], b[1][:n-n8])
		}
	}
}

// first returns &x[0], or nil for an empty x.
func first(x []float32) *float32 {
	if len(x) == 0 {
		return nil
	}
	return &x[0]
}
