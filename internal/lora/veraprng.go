package lora

import "math"

// torchGen is PyTorch's CPU generator (torch.Generator(device="cpu").manual_seed(seed)): the
// 32-bit MT19937 of Matsumoto and Nishimura, seeded with the low 32 bits of seed. VeRA's
// shared projections are drawn from it exactly as PEFT draws them, so that every PEFT version
// rebuilds the same vera_A and vera_B from projection_prng_key (its releases up to 0.20 ignore
// the saved matrices and always regenerate them).
type torchGen struct {
	mt  [624]uint32
	idx int
}

func newTorchGen(seed uint64) *torchGen {
	g := &torchGen{idx: 624}
	g.mt[0] = uint32(seed)
	for i := 1; i < 624; i++ {
		g.mt[i] = 1812433253*(g.mt[i-1]^(g.mt[i-1]>>30)) + uint32(i)
	}
	return g
}

func (g *torchGen) next() uint32 {
	if g.idx >= 624 {
		for i := 0; i < 624; i++ {
			y := g.mt[i]&0x80000000 | g.mt[(i+1)%624]&0x7fffffff
			v := g.mt[(i+397)%624] ^ y>>1
			if y&1 != 0 {
				v ^= 0x9908b0df
			}
			g.mt[i] = v
		}
		g.idx = 0
	}
	y := g.mt[g.idx]
	g.idx++
	y ^= y >> 11
	y ^= y << 7 & 0x9d2c5680
	y ^= y << 15 & 0xefc60000
	y ^= y >> 18
	return y
}

// uniform fills v as Tensor.uniform_(lo, hi, generator=g) does for a contiguous float32
// tensor on the CPU: one 32-bit draw per element in order, its low 24 bits scaled to [0, 1),
// the affine map done in float64 and rounded to float32 (bit for bit as PyTorch).
func (g *torchGen) uniform(v []float32, lo, hi float32) {
	for i := range v {
		x := float64(g.next()&(1<<24-1)) * (1.0 / (1 << 24))
		v[i] = float32(x*(float64(hi)-float64(lo)) + float64(lo))
	}
}

// peftKaiming fills v, the (rows, fanIn) tensor, as PEFT's VeRA _kaiming_init does:
// uniform(−b, b) with b = √3·√2/√fanIn.
func (g *torchGen) peftKaiming(v []float32, fanIn int) {
	b := math.Sqrt(3) * (math.Sqrt(2) / math.Sqrt(float64(fanIn)))
	g.uniform(v, float32(-b), float32(b))
}

// VeRAProjections returns PEFT's shared VeRA projections for projection_prng_key key: A (r,
// maxIn) and then B (maxOut, r), each Kaiming-uniform, drawn in that order from one generator.
func VeRAProjections(key uint64, r, maxIn, maxOut int) (A, B []float32) {
	g := newTorchGen(key)
	A, B = make([]float32, r*maxIn), make([]float32, maxOut*r)
	g.peftKaiming(A, maxIn)
	g.peftKaiming(B, r)
	return A, B
}
