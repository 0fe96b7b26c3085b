package engine

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/loractl/loractl/internal/backend"
	"github.com/loractl/loractl/internal/backend/backendtest"
	"github.com/loractl/loractl/internal/backend/cpu"
	"github.com/loractl/loractl/internal/lora"
	"github.com/loractl/loractl/internal/model"
)

// flashCPU is the CPU backend with the backend.FlashAttention capability, built from its own
// attention ops the slow way, so that the engine's flash path (logsumexp buffers of B·NH·T,
// the attention output handed to the backward) runs without a GPU. The forward derives lse
// from the scores; the backward rebuilds the probabilities from q, k and lse alone and checks
// that out is the forward's output.
type flashCPU struct {
	*cpu.Backend
	fwd, bwd int // calls
}

var _ backend.FlashAttention = (*flashCPU)(nil)

func (f *flashCPU) FlashAttentionFits(D int) bool { return true }

func (f *flashCPU) host(b backend.Buffer) []float32 {
	x := make([]float32, b.Len())
	if err := f.Download(x, b); err != nil {
		panic(err)
	}
	return x
}

// scores calls fn(row, s, score) for every visible (query row, key) pair; row = (b·NH+h)·T+t.
func scores(q, k []float32, seg []int, B, T, NH, NKV, D int, fn func(row, s int, sc float64)) {
	for b := 0; b < B; b++ {
		for h := 0; h < NH; h++ {
			kh := h / (NH / NKV)
			for t := 0; t < T; t++ {
				for s := 0; s <= t; s++ {
					if seg != nil && seg[b*T+s] != seg[b*T+t] {
						continue
					}
					d := 0.0
					for i := 0; i < D; i++ {
						d += float64(q[((b*T+t)*NH+h)*D+i]) * float64(k[((b*T+s)*NKV+kh)*D+i])
					}
					fn((b*NH+h)*T+t, s, d/math.Sqrt(float64(D)))
				}
			}
		}
	}
}

func (f *flashCPU) AttentionTrainForwardLSE(out, lse, q, k, v backend.Buffer, seg []int, B, T, NH, NKV, D int) {
	f.fwd++
	if lse.Len() != B*NH*T {
		panic(fmt.Sprintf("flashCPU: lse has %d elements, want B·NH·T = %d", lse.Len(), B*NH*T))
	}
	att := f.Alloc(B * NH * T * T)
	defer f.Free(att)
	f.AttentionTrainForward(out, att, q, k, v, seg, B, T, NH, NKV, D)
	m := make([]float64, B*NH*T)
	for i := range m {
		m[i] = math.Inf(-1)
	}
	Q, K := f.host(q), f.host(k)
	scores(Q, K, seg, B, T, NH, NKV, D, func(row, s int, sc float64) { m[row] = max(m[row], sc) })
	sum := make([]float64, B*NH*T)
	scores(Q, K, seg, B, T, NH, NKV, D, func(row, s int, sc float64) { sum[row] += math.Exp(sc - m[row]) })
	L := make([]float32, B*NH*T)
	for i := range L {
		L[i] = float32(m[i] + math.Log(sum[i]))
	}
	if err := f.Upload(lse, L); err != nil {
		panic(err)
	}
}

func (f *flashCPU) AttentionBackwardLSE(dq, dk, dv, dout, out, lse, q, k, v backend.Buffer, seg []int, B, T, NH, NKV, D int) {
	f.bwd++
	L := f.host(lse)
	if len(L) != B*NH*T {
		panic(fmt.Sprintf("flashCPU: lse has %d elements, want B·NH·T = %d", len(L), B*NH*T))
	}
	P := make([]float32, B*NH*T*T)
	scores(f.host(q), f.host(k), seg, B, T, NH, NKV, D, func(row, s int, sc float64) {
		P[row*T+s] = float32(math.Exp(sc - float64(L[row])))
	})
	// out must be the forward's output: Σ_s P·v.
	O, V := f.host(out), f.host(v)
	for row := 0; row < B*NH*T; row++ {
		b, h, t := row/(NH*T), row/T%NH, row%T
		kh := h / (NH / NKV)
		for i := 0; i < D; i++ {
			want := 0.0
			for s := 0; s <= t; s++ {
				want += float64(P[row*T+s]) * float64(V[((b*T+s)*NKV+kh)*D+i])
			}
			if got := float64(O[((b*T+t)*NH+h)*D+i]); math.Abs(got-want) > 1e-4*(1+math.Abs(want)) {
				panic(fmt.Sprintf("flashCPU: out[b=%d t=%d h=%d %d] = %g is not the forward's output %g", b, t, h, i, got, want))
			}
		}
	}
	att := f.Alloc(B * NH * T * T)
	defer f.Free(att)
	if err := f.Upload(att, P); err != nil {
		panic(err)
	}
	f.AttentionBackward(dq, dk, dv, dout, att, q, k, v, seg, B, T, NH, NKV, D)
}

// TestFlashAttentionPath: on a backend with backend.FlashAttention the engine keeps only the
// logsumexp per attention row and gives the loss and gradients of the probabilities path
// (LoRA and full, llama and qwen3, packed samples, with and without checkpointing), and its
// memory plan shrinks by the T×T buffers.
func TestFlashAttentionPath(t *testing.T) {
	for _, c := range []struct {
		spec   tinySpec
		method string
		ckpt   bool
	}{
		{tinyLlama, MethodLoRA, false}, {tinyLlama, MethodLoRA, true}, {tinyQwen3, MethodFull, false}, {tinyQwen3, MethodLoRA, true},
	} {
		t.Run(fmt.Sprintf("%s %s ckpt=%v", c.spec.name, c.method, c.ckpt), func(t *testing.T) {
			dir := c.spec.write(t)
			fl := &flashCPU{Backend: cpu.New()}
			var res [2]struct {
				loss float64
				g    [][]float32
				plan MemoryPlan
			}
			packed, _ := packedBatch(rand.New(rand.NewPCG(4, 4)), c.spec.V, 6, 9)
			for i, be := range []backend.Backend{cpu.New(), fl} {
				m, err := model.Load(dir, be)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(m.Close)
				var a *lora.Adapter
				if c.method == MethodLoRA {
					a = newAdapter(t, m.Config(), 2, 4, 0.2, 6)
				}
				e := newEngine(t, m, a, Options{Method: c.method, GradCheckpointing: c.ckpt})
				if (e.fa != nil) != (i == 1) {
					t.Fatalf("backend %d: flash attention in use = %v", i, e.fa != nil)
				}
				res[i].loss, res[i].g = grads(t, e, packed)
				res[i].plan = e.MemoryPlan(packed.B, packed.T)
			}
			if fl.fwd == 0 || fl.bwd == 0 {
				t.Fatalf("the engine did not use the flash ops (%d forward, %d backward calls)", fl.fwd, fl.bwd)
			}
			if d := math.Abs(res[0].loss - res[1].loss); d > 1e-5*math.Abs(res[0].loss) {
				t.Errorf("loss %.9g with flash attention, %.9g without", res[1].loss, res[0].loss)
			}
			d, s := maxDiff(res[1].g, res[0].g)
			if s == 0 || d > 1e-5*s {
				t.Errorf("gradients differ by %.3g (largest %.3g)", d, s)
			}
			cfg := c.spec
			layers := cfg.L
			if c.ckpt {
				layers = 1
			}
			T := packed.T
			saved := int64(4 * layers * packed.B * cfg.NH * T * (T - 1))
			if got := res[0].plan.Activations - res[1].plan.Activations; got != saved {
				t.Errorf("flash attention saves %d activation bytes, want %d (the T×T probabilities less the logsumexp)", got, saved)
			}
			t.Logf("loss %.7f vs %.7f; grads max diff %.2g of %.2g; activations %d → %d bytes", res[0].loss, res[1].loss, d, s,
				res[0].plan.Activations, res[1].plan.Activations)
		})
	}
}

// TestFlashConformance runs the backend conformance suite on the stand-in, which exercises the
// suite's FlashAttention checks (finite differences of AttentionBackwardLSE) without a GPU and
// shows the stand-in itself is right.
func TestFlashConformance(t *testing.T) {
	backendtest.Run(t, func() backend.Backend { return &flashCPU{Backend: cpu.New()} })
}
