package metrics

import (
	"bytes"
	"fmt"
	"image/color"
	"math"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	"github.com/loractl/loractl/internal/atomicfile"
)

// Point is one loss value at an optimizer step.
type Point struct {
	Step int
	Loss float64
}

// Curves splits metrics records into the train loss curve (every record) and the eval loss
// curve (records with an eval loss), in record order.
func Curves(recs []Record) (train, eval []Point) {
	for _, r := range recs {
		train = append(train, Point{r.Step, r.Loss})
		if r.HasEval {
			eval = append(eval, Point{r.Step, r.EvalLoss})
		}
	}
	return train, eval
}

// Size of loss.png: 10 × 6 inches at the PNG backend's 96 dpi, 960 × 576 pixels.
const (
	plotWidth  = 10 * vg.Inch
	plotHeight = 6 * vg.Inch
)

var (
	trainColor = color.RGBA{R: 31, G: 119, B: 180, A: 255} // blue
	evalColor  = color.RGBA{R: 214, G: 39, B: 40, A: 255}  // red
)

// PlotLoss draws train loss (a line) and eval loss (a line with a marker at each eval) against
// step, with a title, axis labels and a legend, and writes the PNG to path atomically (a
// temporary file in the same directory renamed over path). Points whose loss is NaN or
// infinite are left out. Either curve may be empty.
func PlotLoss(path string, train, eval []Point) error {
	p := plot.New()
	p.Title.Text = "Training loss"
	p.Title.TextStyle.Font.Size = vg.Points(14)
	p.Title.Padding = vg.Points(8)
	p.X.Label.Text = "step"
	p.Y.Label.Text = "loss (cross-entropy, nats/token)"
	p.Legend.Top = true
	p.Legend.XOffs, p.Legend.YOffs = -vg.Points(8), -vg.Points(4)
	p.Legend.TextStyle.Font.Size = vg.Points(11)
	p.Add(plotter.NewGrid())
	drawn := false

	if xys := finiteXYs(train); len(xys) > 0 {
		line, err := plotter.NewLine(xys)
		if err != nil {
			return fmt.Errorf("loss plot %s: train curve: %w", path, err)
		}
		line.Color = trainColor
		line.Width = vg.Points(1.5)
		p.Add(line)
		p.Legend.Add("train", line)
		drawn = true
	}
	if xys := finiteXYs(eval); len(xys) > 0 {
		line, points, err := plotter.NewLinePoints(xys)
		if err != nil {
			return fmt.Errorf("loss plot %s: eval curve: %w", path, err)
		}
		line.Color = evalColor
		line.Width = vg.Points(1)
		line.Dashes = []vg.Length{vg.Points(4), vg.Points(2)}
		points.Shape = draw.CircleGlyph{}
		points.Color = evalColor
		points.Radius = vg.Points(3.5)
		p.Add(line, points)
		p.Legend.Add("eval", line, points)
		drawn = true
	}
	if !drawn {
		// No data: show an empty 0..1 frame rather than a degenerate axis.
		p.X.Min, p.X.Max, p.Y.Min, p.Y.Max = 0, 1, 0, 1
	}

	// Draw on a white canvas with a margin, so nothing touches the image edge.
	img := vgimg.New(plotWidth, plotHeight)
	margin := vg.Points(12)
	p.Draw(draw.Crop(draw.New(img), margin, -margin, margin/2, -margin/2))
	var buf bytes.Buffer
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(&buf); err != nil {
		return fmt.Errorf("loss plot %s: render: %w", path, err)
	}
	if err := atomicfile.Write(path, buf.Bytes()); err != nil {
		return fmt.Errorf("loss plot: %w; check that the output folder exists and is writable", err)
	}
	return nil
}

// finiteXYs converts points to plotter data, leaving out non-finite losses.
func finiteXYs(pts []Point) plotter.XYs {
	xys := make(plotter.XYs, 0, len(pts))
	for _, pt := range pts {
		if math.IsNaN(pt.Loss) || math.IsInf(pt.Loss, 0) {
			continue
		}
		xys = append(xys, plotter.XY{X: float64(pt.Step), Y: pt.Loss})
	}
	return xys
}
