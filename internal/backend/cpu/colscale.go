package cpu

import "github.com/loractl/loractl/internal/backend"

// ColScaleForward computes y = x·diag(c) + bias. y (N, OC), x (N, OC), c (OC), bias (OC) or
// nil; y may be x. Each element is rounded after the product and again after the bias (no
// fused multiply-add), so that c = 1 and no bias leave x exactly as it was.
func (be *Backend) ColScaleForward(y, x, c, bias backend.Buffer, N, OC int) {
	op := "ColScaleForward"
	ys, xs, cs := data(y), data(x), data(c)
	need(op, "y", ys, N*OC)
	need(op, "x", xs, N*OC)
	need(op, "c", cs, OC)
	var bs []float32
	if bias != nil {
		bs = data(bias)
		need(op, "bias", bs, OC)
	}
	t := colScaleArgs.get()
	*t = colScaleBody{y: ys, x: xs, c: cs[:OC], bias: bs, oc: OC}
	forRange(N, 1, be.workers(N*OC), t)
	colScaleArgs.put(t)
}

// colScaleBody is ColScaleForward over a range of rows.
type colScaleBody struct {
	y, x    []float32 // (N, OC)
	c, bias []float32 // (OC); bias may be nil
	oc      int
}

var colScaleArgs argPool[colScaleBody]

func (a *colScaleBody) run(lo, hi int) {
	for n := lo; n < hi; n++ {
		xr, yr := a.x[n*a.oc:(n+1)*a.oc], a.y[n*a.oc:(n+1)*a.oc]
		for o, c := range a.c {
			v := float32(xr[o] * c)
			if a.bias != nil {
				v += a.bias[o]
			}
			yr[o] = v
		}
	}
}

// ColScaleBackward computes dx = dy·diag(c) and dc[o] += Σ_n dy[n, o]·x[n, o] (summed in
// float64, rows in order). dx (N, OC), dc (OC), dy (N, OC), x (N, OC), c (OC); dx may be dy.
func (be *Backend) ColScaleBackward(dx, dc, dy, x, c backend.Buffer, N, OC int) {
	op := "ColScaleBackward"
	dxs, dcs, dys, xs, cs := data(dx), data(dc), data(dy), data(x), data(c)
	need(op, "dx", dxs, N*OC)
	need(op, "dc", dcs, OC)
	need(op, "dy", dys, N*OC)
	need(op, "x", xs, N*OC)
	need(op, "c", cs, OC)
	t := colScaleBwdArgs.get()
	*t = colScaleBwdBody{dx: dxs, dc: dcs[:OC], dy: dys, x: xs, c: cs[:OC], n: N}
	forRange(OC, elemAlign, be.workers(N*OC), t)
	colScaleBwdArgs.put(t)
}

// colScaleBwdBody is ColScaleBackward over a range of columns (each worker owns its dc).
type colScaleBwdBody struct {
	dx, dy, x []float32 // (N, OC)
	dc, c     []float32 // (OC)
	n         int
}

var colScaleBwdArgs argPool[colScaleBwdBody]

func (a *colScaleBwdBody) run(lo, hi int) {
	oc := len(a.c)
	var small [64]float64
	sum := small[:0]
	if hi-lo <= len(small) {
		sum = small[:hi-lo]
	} else {
		sum = make([]float64, hi-lo)
	}
	clear(sum)
	for n := 0; n < a.n; n++ {
		row := n * oc
		for o := lo; o < hi; o++ {
			g := a.dy[row+o]
			sum[o-lo] += float64(g) * float64(a.x[row+o])
			a.dx[row+o] = g * a.c[o]
		}
	}
	for o := lo; o < hi; o++ {
		a.dc[o] += float32(sum[o-lo])
	}
}
