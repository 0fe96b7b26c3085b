package metrics

import (
	"image"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// decodePNG opens path as a PNG and returns the image.
func decodePNG(t *testing.T, path string) image.Image {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("%s is not a valid PNG: %v", path, err)
	}
	return img
}

// colorCounts counts pixels near the train (blue) and eval (red) colours and pixels that are
// not white.
func colorCounts(img image.Image) (blue, red, nonWhite int) {
	b := img.Bounds()
	near := func(r, g, bl uint32, c [3]uint32) bool {
		d := func(x, y uint32) uint32 {
			if x > y {
				return x - y
			}
			return y - x
		}
		return d(r>>8, c[0])+d(g>>8, c[1])+d(bl>>8, c[2]) < 60
	}
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			if r>>8 < 250 || g>>8 < 250 || bl>>8 < 250 {
				nonWhite++
			}
			if near(r, g, bl, [3]uint32{31, 119, 180}) {
				blue++
			}
			if near(r, g, bl, [3]uint32{214, 39, 40}) {
				red++
			}
		}
	}
	return blue, red, nonWhite
}

// syntheticCurves is a falling train loss over 300 steps with noise, an eval every 50 steps
// and one NaN (which must be left out, not break the plot).
func syntheticCurves() (train, eval []Point) {
	for s := 1; s <= 300; s++ {
		loss := 1.2 + 4*math.Exp(-float64(s)/60) + 0.1*math.Sin(float64(s)*1.7)
		if s == 150 {
			loss = math.NaN()
		}
		train = append(train, Point{s, loss})
		if s%50 == 0 {
			eval = append(eval, Point{s, 1.3 + 4*math.Exp(-float64(s)/60)})
		}
	}
	return train, eval
}

func TestPlotLossWritesReadablePNG(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "loss.png")
	train, eval := syntheticCurves()
	if err := PlotLoss(path, train, eval); err != nil {
		t.Fatal(err)
	}
	img := decodePNG(t, path)
	if b := img.Bounds(); b.Dx() != 960 || b.Dy() != 576 {
		t.Fatalf("loss.png is %dx%d, want 960x576", b.Dx(), b.Dy())
	}
	blue, red, nonWhite := colorCounts(img)
	total := 960 * 576
	t.Logf("pixels: %d blue (train), %d red (eval), %d non-white of %d", blue, red, nonWhite, total)
	if blue < 500 {
		t.Errorf("only %d pixels in the train colour; the train curve is missing", blue)
	}
	if red < 200 {
		t.Errorf("only %d pixels in the eval colour; the eval curve is missing", red)
	}
	if nonWhite < total/100 || nonWhite > total/2 {
		t.Errorf("%d of %d pixels are not white; the chart looks blank or filled", nonWhite, total)
	}
	// Atomic write: no temporary file is left next to it.
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("the output folder holds %d entries, want only loss.png", len(entries))
	}
	if os.Getenv("LORACTL_KEEP_PLOT") != "" {
		data, _ := os.ReadFile(path)
		os.WriteFile(os.Getenv("LORACTL_KEEP_PLOT"), data, 0o644)
	}
}

func TestPlotLossTrainOnlyAndEmpty(t *testing.T) {
	dir := t.TempDir()
	train, _ := syntheticCurves()
	p1 := filepath.Join(dir, "train-only.png")
	if err := PlotLoss(p1, train, nil); err != nil {
		t.Fatal(err)
	}
	blue, red, _ := colorCounts(decodePNG(t, p1))
	if blue < 500 || red > 0 {
		t.Errorf("train-only plot: %d blue, %d red pixels; want a train curve and no eval", blue, red)
	}
	p2 := filepath.Join(dir, "empty.png")
	if err := PlotLoss(p2, nil, []Point{{1, math.Inf(1)}}); err != nil {
		t.Fatalf("PlotLoss with no finite points: %v", err)
	}
	decodePNG(t, p2)
}

func TestPlotLossBadPath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing-dir", "loss.png")
	train, eval := syntheticCurves()
	err := PlotLoss(path, train, eval)
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("PlotLoss(%s) error = %v, want one naming the path", path, err)
	}
}

func TestCurves(t *testing.T) {
	recs := []Record{{Step: 1, Loss: 3}, {Step: 2, Loss: 2, HasEval: true, EvalLoss: 2.5}, {Step: 3, Loss: 1}}
	train, eval := Curves(recs)
	if len(train) != 3 || train[2] != (Point{3, 1}) || len(eval) != 1 || eval[0] != (Point{2, 2.5}) {
		t.Fatalf("Curves = %v, %v", train, eval)
	}
}
