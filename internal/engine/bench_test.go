package engine

import (
	"math/rand/v2"
	"testing"

	"github.com/loractl/loractl/internal/backend/cpu"
	"github.com/loractl/loractl/internal/model"
	"github.com/loractl/loractl/internal/refdata"
)

// BenchmarkForwardBackwardStories260K times one LoRA (r=8, all-linear) micro-batch of 4×128
// tokens on stories260K and reports tokens/s.
func BenchmarkForwardBackwardStories260K(b *testing.B) {
	for _, ckpt := range []bool{false, true} {
		name := "plain"
		if ckpt {
			name = "checkpointing"
		}
		b.Run(name, func(b *testing.B) {
			m, err := model.Load(refdata.Stories260K(b), cpu.New())
			if err != nil {
				b.Fatal(err)
			}
			defer m.Close()
			a := newAdapter(b, m.Config(), 8, 16, 0, 1)
			e, err := New(m, a, Options{Method: MethodLoRA, Dropout: 0.05, GradCheckpointing: ckpt})
			if err != nil {
				b.Fatal(err)
			}
			defer e.Close()
			batch := randomBatch(rand.New(rand.NewPCG(1, 1)), m.Config().VocabSize, 4, 128)
			b.ResetTimer()
			for b.Loop() {
				if _, _, err := e.ForwardBackward(batch, 1); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*4*128)/b.Elapsed().Seconds(), "tokens/s")
		})
	}
}
