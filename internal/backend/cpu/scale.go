package cpu

import (
	"github.com/loractl/loractl/internal/backend"
	"github.com/loractl/loractl/internal/backend/cpu/vec"
)

// Scale computes x[0:n] *= alpha.
func (be *Backend) Scale(x backend.Buffer, alpha float32, n int) {
	xs := data(x)
	need("Scale", "x", xs, n)
	t := scaleArgs.get()
	*t = scaleBody{x: xs[:n], alpha: alpha}
	forRange(n, elemAlign, be.workers(n), t)
	scaleArgs.put(t)
}

// scaleBody is Scale's elementwise loop body.
type scaleBody struct {
	x     []float32 // (n)
	alpha float32
}

var scaleArgs argPool[scaleBody]

func (a *scaleBody) run(lo, hi int) { vec.Scale(a.x[lo:hi], a.alpha) }
