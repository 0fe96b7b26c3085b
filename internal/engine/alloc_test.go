package engine

import (
	"math/rand/v2"
	"testing"

	"github.com/loractl/loractl/internal/backend/cpu"
	"github.com/loractl/loractl/internal/model"
	"github.com/loractl/loractl/internal/refdata"
)

// maxStepAllocs is the number of heap allocations a steady-state ForwardBackward may make on
// the CPU backend: none. Buffers are sized on the first call; after that the engine and the
// backend's ops reuse their scratch, the worker pool takes recycled argument structs (see
// internal/backend/cpu/pool.go) and the GEMM recycles its jobs and packing buffers.
const maxStepAllocs = 0

// TestForwardBackwardAllocs: after the first call, a LoRA micro-batch (with dropout, so the
// host mask path runs) allocates nothing on the CPU backend, with and without gradient
// checkpointing. The 4×128 stories260K batch is large enough that the ops run on the worker pool.
func TestForwardBackwardAllocs(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("runs several training steps; the race detector makes sync.Pool drop items")
	}
	for _, ckpt := range []bool{false, true} {
		m, err := model.Load(refdata.Stories260K(t), cpu.New())
		if err != nil {
			t.Fatal(err)
		}
		e := newEngine(t, m, newAdapter(t, m.Config(), 8, 16, 0, 1), Options{Method: MethodLoRA, Dropout: 0.05, GradCheckpointing: ckpt})
		batch := randomBatch(rand.New(rand.NewPCG(1, 1)), m.Config().VocabSize, 4, 128)
		step := func() {
			if _, _, err := e.ForwardBackward(batch, 1); err != nil {
				t.Fatal(err)
			}
		}
		step() // sizes the buffers
		if n := testing.AllocsPerRun(3, step); n > maxStepAllocs {
			t.Errorf("checkpointing=%v: %.0f allocations per ForwardBackward, want ≤ %d", ckpt, n, maxStepAllocs)
		}
		m.Close()
	}
}
