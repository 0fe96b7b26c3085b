package model

import (
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/loractl/loractl/internal/backend"
	"github.com/loractl/loractl/internal/backend/cpu"
	"github.com/loractl/loractl/internal/safetensors"
)

// weightBytes returns the backend bytes of m's matrices and of its other tensors, from the
// dtype each is stored as.
func weightBytes(t *testing.T, m *Model) (matrices, others int) {
	t.Helper()
	for _, s := range m.specs() {
		dt, ok := m.WeightDType(s.name)
		if !ok {
			t.Fatalf("no dtype for %s", s.name)
		}
		n := (*s.dst).Len() * dt.Size()
		if len(s.shape) == 2 {
			matrices += n
		} else {
			others += n
		}
	}
	return matrices, others
}

// TestKeepBF16 loads every synthetic architecture from a BF16 checkpoint twice, converted to
// float32 (Load) and kept in BF16 (LoadWith KeepBF16): the logits of a whole-sequence forward
// and of cached generation steps are bitwise equal, the matrices are stored as BF16 (half the
// bytes) and the norms and biases as F32, and Download gives the same float32 values.
func TestKeepBF16(t *testing.T) {
	for _, c := range tinyCases {
		t.Run(c.name, func(t *testing.T) {
			tc := c.tc
			tc.dtype = safetensors.BF16
			dir, _ := tc.build(t)
			m32, err := Load(dir, cpu.New())
			if err != nil {
				t.Fatal(err)
			}
			defer m32.Close()
			m16, err := LoadWith(dir, cpu.New(), LoadOptions{KeepBF16: true})
			if err != nil {
				t.Fatal(err)
			}
			defer m16.Close()

			// Storage.
			for _, s := range m16.specs() {
				dt, _ := m16.WeightDType(s.name)
				want := backend.F32
				if len(s.shape) == 2 {
					want = backend.BF16
				}
				if dt != want {
					t.Errorf("%s %v kept as %s, want %s", s.name, s.shape, dt, want)
				}
				if dt32, _ := m32.WeightDType(s.name); dt32 != backend.F32 {
					t.Errorf("Load kept %s as %s", s.name, dt32)
				}
				b32, _, _ := m32.Tensor(s.name)
				b16, _, _ := m16.Tensor(s.name)
				v32, v16 := make([]float32, b32.Len()), make([]float32, b16.Len())
				if err := m32.be.Download(v32, b32); err != nil {
					t.Fatal(err)
				}
				if err := m16.be.Download(v16, b16); err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(v32, v16) {
					t.Errorf("%s: Download differs between the F32 and the BF16 model", s.name)
				}
			}
			mat32, oth32 := weightBytes(t, m32)
			mat16, oth16 := weightBytes(t, m16)
			if 2*mat16 != mat32 || oth16 != oth32 {
				t.Errorf("matrices %d → %d bytes, others %d → %d: want the matrices halved, the rest unchanged", mat32, mat16, oth32, oth16)
			}
			if tc.tied && m16.lmHead != m16.embed {
				t.Error("tied lm_head is not the embedding buffer")
			}

			// Whole-sequence forward (prefill, evaluation).
			tokens := randomTokens(tc.seed+100, 11, tc.V)
			want, err := m32.ForwardAll(tokens)
			if err != nil {
				t.Fatal(err)
			}
			got, err := m16.ForwardAll(tokens)
			if err != nil {
				t.Fatal(err)
			}
			sameLogits(t, "ForwardAll", got, want)

			// Cached generation: a prompt, then one token at a time (the T=1 GEMM path).
			c32, c16 := m32.NewKVCache(32), m16.NewKVCache(32)
			defer c32.Close()
			defer c16.Close()
			r := rand.New(rand.NewPCG(tc.seed, 5))
			feed := tokens[:4]
			for step := 0; step < 4; step++ {
				w, err := m32.Step(c32, feed)
				if err != nil {
					t.Fatal(err)
				}
				g, err := m16.Step(c16, feed)
				if err != nil {
					t.Fatal(err)
				}
				sameLogits(t, "Step", g, w)
				feed = []int{r.IntN(tc.V)}
			}
		})
	}
}

// sameLogits fails t unless got and want are bitwise equal.
func sameLogits(t *testing.T, what string, got, want []float32) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d logits, want %d", what, len(got), len(want))
	}
	for i := range got {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
			t.Fatalf("%s: logit %d is %.9g with BF16 weights, %.9g with F32", what, i, got[i], want[i])
		}
	}
}

// TestKeepBF16Fallbacks: KeepBF16 leaves F32 and F16 checkpoints in float32, does nothing on a
// backend without backend.WeightStore, and AddToWeight refuses a BF16 weight but still works on
// the F32 tensors of the same model.
func TestKeepBF16Fallbacks(t *testing.T) {
	base := tinyCases[1].tc // untied, biases
	for _, dt := range []safetensors.DType{safetensors.F32, safetensors.F16} {
		tc := base
		tc.dtype = dt
		dir, _ := tc.build(t)
		m, err := LoadWith(dir, cpu.New(), LoadOptions{KeepBF16: true})
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range m.TensorNames() {
			if got, _ := m.WeightDType(name); got != backend.F32 {
				t.Errorf("%s checkpoint: %s kept as %s", dt, name, got)
			}
		}
		m.Close()
	}

	tc := base
	tc.dtype = safetensors.BF16
	dir, _ := tc.build(t)
	plain, err := LoadWith(dir, plainBackend{cpu.New()}, LoadOptions{KeepBF16: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range plain.TensorNames() {
		b, _, _ := plain.Tensor(name)
		if cpu.New().DTypeOf(b) != backend.F32 {
			t.Errorf("backend without WeightStore: %s is not F32", name)
		}
	}
	plain.Close()

	m, err := LoadWith(dir, cpu.New(), LoadOptions{KeepBF16: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	const q = "model.layers.0.self_attn.q_proj.weight"
	shape, _ := m.WeightShape(q)
	err = m.AddToWeight(q, make([]float32, shape[0]*shape[1]))
	if err == nil || !strings.Contains(err.Error(), "KeepBF16") {
		t.Errorf("AddToWeight on a BF16 weight: %v, want an error that names KeepBF16", err)
	}
	const norm = "model.norm.weight"
	delta := make([]float32, tc.C)
	for i := range delta {
		delta[i] = float32(i) / 8
	}
	if err := m.AddToWeight(norm, delta); err != nil {
		t.Errorf("AddToWeight on an F32 norm of a KeepBF16 model: %v", err)
	}
}

// plainBackend hides every optional capability of the backend it wraps.
type plainBackend struct{ backend.Backend }

// TestToBF16: an F32 checkpoint loaded with ToBF16 stores its matrices as BF16, each value its
// float32 rounded to nearest even, at half the bytes; vectors stay F32; the logits move by a
// small, nonzero rounding effect.
func TestToBF16(t *testing.T) {
	c := tinyCases[0]
	tc := c.tc
	tc.dtype = safetensors.F32
	dir, _ := tc.build(t)
	m32, err := Load(dir, cpu.New())
	if err != nil {
		t.Fatal(err)
	}
	defer m32.Close()
	mb, err := LoadWith(dir, cpu.New(), LoadOptions{ToBF16: true})
	if err != nil {
		t.Fatal(err)
	}
	defer mb.Close()
	for _, s := range mb.specs() {
		dt, _ := mb.WeightDType(s.name)
		want := backend.F32
		if len(s.shape) == 2 {
			want = backend.BF16
		}
		if dt != want {
			t.Fatalf("%s %v stored as %s, want %s", s.name, s.shape, dt, want)
		}
		if len(s.shape) != 2 {
			continue
		}
		b32, _, _ := m32.Tensor(s.name)
		bb, _, _ := mb.Tensor(s.name)
		v32, vb := make([]float32, b32.Len()), make([]float32, bb.Len())
		if err := m32.be.Download(v32, b32); err != nil {
			t.Fatal(err)
		}
		if err := mb.be.Download(vb, bb); err != nil {
			t.Fatal(err)
		}
		for i := range v32 {
			if want := safetensors.BF16ToFloat32(safetensors.Float32ToBF16(v32[i])); math.Float32bits(vb[i]) != math.Float32bits(want) {
				t.Fatalf("%s[%d] = %g, want %g (%g rounded to BF16)", s.name, i, vb[i], want, v32[i])
			}
		}
	}
	mat32, _ := weightBytes(t, m32)
	matb, _ := weightBytes(t, mb)
	if 2*matb != mat32 {
		t.Errorf("matrices %d → %d bytes, want half", mat32, matb)
	}
	tokens := randomTokens(tc.seed+7, 9, tc.V)
	want, err := m32.ForwardAll(tokens)
	if err != nil {
		t.Fatal(err)
	}
	got, err := mb.ForwardAll(tokens)
	if err != nil {
		t.Fatal(err)
	}
	var maxd, maxv float64
	for i := range got {
		maxd = max(maxd, math.Abs(float64(got[i]-want[i])))
		maxv = max(maxv, math.Abs(float64(want[i])))
	}
	if maxd == 0 || maxd > 0.05*maxv {
		t.Errorf("logits of the BF16-rounded base differ from F32 by %.3g (of %.3g): want a small nonzero rounding effect", maxd, maxv)
	}
}
