package synth

import "math"

// Rand is a small deterministic pseudo-random generator (splitmix64). It is defined here,
// rather than taken from math/rand, so that the generated data sets and initial weights are
// the same bytes for a given seed on every Go release.
type Rand struct{ state uint64 }

// NewRand returns a generator seeded with seed.
func NewRand(seed uint64) *Rand { return &Rand{state: seed} }

// Uint64 returns the next 64 random bits.
func (r *Rand) Uint64() uint64 {
	r.state += 0x9e3779b97f4a7c15
	z := r.state
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// IntN returns a uniform integer in [0, n). n ≤ 0 returns 0.
func (r *Rand) IntN(n int) int {
	if n <= 0 {
		return 0
	}
	// Rejection sampling removes the modulo bias.
	bound := uint64(n)
	limit := math.MaxUint64 - math.MaxUint64%bound
	for {
		if v := r.Uint64(); v < limit {
			return int(v % bound)
		}
	}
}

// Float64 returns a uniform float64 in [0, 1).
func (r *Rand) Float64() float64 { return float64(r.Uint64()>>11) / (1 << 53) }

// NormFloat64 returns a standard normal sample (Box-Muller).
func (r *Rand) NormFloat64() float64 {
	u1 := 1 - r.Float64() // (0, 1]: the log is finite
	u2 := r.Float64()
	return math.Sqrt(-2*math.Log(u1)) * math.Cos(2*math.Pi*u2)
}
