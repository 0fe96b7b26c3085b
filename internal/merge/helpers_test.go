package merge

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/loractl/loractl/internal/lora"
	"github.com/loractl/loractl/internal/model"
	"github.com/loractl/loractl/internal/refdata"
	"github.com/loractl/loractl/internal/safetensors"
	"github.com/loractl/loractl/internal/synth"
)

// newAdapter makes a random adapter over targets of the model in base, with B drawn at
// random too (a fresh LoRA has B = 0, which would merge to nothing), and saves it.
func newAdapter(t *testing.T, base string, targets []string, r int, alpha float64, rsLoRA bool, seed uint64) (*lora.Adapter, string) {
	t.Helper()
	cfg, err := model.LoadConfig(base)
	if err != nil {
		t.Fatal(err)
	}
	mods, err := lora.Select(lora.Modules(cfg), targets, nil)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed, 77))
	a, err := lora.New(lora.Config{R: r, Alpha: alpha, RSLoRA: rsLoRA, Base: base, Fingerprint: lora.Fingerprint(cfg)}, mods, lora.InitDefault, rng)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range a.Pairs {
		for i := range p.B {
			p.B[i] = float32(0.05 * rng.NormFloat64())
		}
	}
	dir := filepath.Join(t.TempDir(), "adapter")
	if err := a.Save(dir); err != nil {
		t.Fatal(err)
	}
	return a, dir
}

// synthBase writes a random Llama of the given shape (tied embeddings, F32) into a new folder,
// with the stories260K-like side files. The tokenizer is copied from stories260K when the
// reference folder is available and the vocabulary matches, else left out.
func synthBase(t testing.TB, s synth.LlamaShape, seed uint64) string {
	t.Helper()
	dir := t.TempDir()
	ts, _, err := synth.LlamaTensors(s, 0.02, seed)
	if err != nil {
		t.Fatal(err)
	}
	if err := safetensors.Write(filepath.Join(dir, "model.safetensors"), ts, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
	js, _ := json.MarshalIndent(s.Config(256, 0.02), "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "config.json"), js, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// tensors reads every tensor of a model folder as float64.
func tensors(t *testing.T, dir string) (map[string][]float64, map[string]safetensors.TensorInfo) {
	t.Helper()
	ck, err := safetensors.OpenCheckpoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	out := map[string][]float64{}
	infos := map[string]safetensors.TensorInfo{}
	for _, n := range ck.Names() {
		v, err := ck.Float32(n)
		if err != nil {
			t.Fatal(err)
		}
		f := make([]float64, len(v))
		for i, x := range v {
			f[i] = float64(x)
		}
		out[n] = f
		infos[n], _ = ck.Info(n)
	}
	return out, infos
}

// rawTensors reads every tensor's bytes.
func rawTensors(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	ck, err := safetensors.OpenCheckpoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	out := map[string][]byte{}
	for _, n := range ck.Names() {
		b, err := ck.Bytes(n)
		if err != nil {
			t.Fatal(err)
		}
		out[n] = append([]byte(nil), b...)
	}
	return out
}

// exactDelta is Σ wᵢ·sᵢ·BᵢAᵢ of weight name in float64, term by term as the merge orders them.
func exactDelta(adapters []*lora.Adapter, weights []float64, name string) []float64 {
	var d []float64
	for ai, a := range adapters {
		for _, p := range a.Pairs {
			if p.Module.Weight() != name {
				continue
			}
			if d == nil {
				d = make([]float64, p.Module.Out*p.Module.In)
			}
			c := weights[ai] * paperScale(a, p)
			r, in := a.RankOf(p), p.Module.In
			for o := 0; o < p.Module.Out; o++ {
				for k := 0; k < r; k++ {
					b := c * float64(p.B[o*r+k])
					for i := 0; i < in; i++ {
						d[o*in+i] += b * float64(p.A[k*in+i])
					}
				}
			}
		}
	}
	return d
}

// maxRel is max|a-b| / max|b|.
func maxRel(a, b []float64) float64 {
	var num, den float64
	for i := range a {
		num = math.Max(num, math.Abs(a[i]-b[i]))
		den = math.Max(den, math.Abs(b[i]))
	}
	if den == 0 {
		return num
	}
	return num / den
}

func stories(t *testing.T) string { return refdata.Stories260K(t) }

func outDir(t *testing.T) string { return filepath.Join(t.TempDir(), "merged") }

func mustRun(t *testing.T, opt Options) *Summary {
	t.Helper()
	s, err := Run(opt)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
