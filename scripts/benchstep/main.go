// Command benchstep times loractl's LoRA train step on a random-init Llama and prints one JSON
// object. It is the loractl half of scripts/bench-cpu.sh; scripts/bench_torch.py is the PyTorch
// half and prints the same fields.
//
//	go run ./scripts/benchstep -shape stories15m -threads 2 -warmup 2 -steps 3
//
// The model (config.json + model.safetensors, HF Llama names, every matrix drawn from
// N(0, 0.02²), norms 1, tied embeddings) is written to a temporary folder by a child process
// (this program run with -gen), so that generating the weights does not count in the peak RSS,
// then loaded on the cpu backend. With -dtype f32 (the default) the file stores F32 and
// model.Load converts nothing; with -dtype bf16 every tensor is stored as BF16 (as Hugging Face
// checkpoints are; the values are the F32 draws rounded to nearest even) and the model is loaded
// with model.LoadWith(KeepBF16): the frozen matrices stay BF16 in memory (half the bytes) and
// are widened inside the GEMM's packing, norms are converted to F32, and the LoRA weights, the
// activations and all arithmetic stay F32. LoRA (r 16 by default) goes on every Linear of
// every block (all-linear), initialised as PEFT does. One step is what internal/train runs:
// ZeroGrads, ForwardBackward over batch × seq tokens (gradient scale 1/targets), SyncGrads,
// ClipGlobalNorm(1.0), AdamW.Step, SyncParams.
//
// The data is the same in both halves: B·(T+1) token ids drawn with splitmix64 from -data-seed
// (id = next() mod vocab); row b is ids[b(T+1) : (b+1)(T+1)], inputs its first T, targets its
// last T. Every step uses the same batch.
//
// Model FLOPs per token (the convention of nanoGPT/PaLM, with the frozen base taking no weight
// gradient):
//
//	4·N + 12·L·T·(NH·D) + 6·r·Σ(in+out)
//
// N is the number of weights in the Linear layers of all blocks plus lm_head (tied or not;
// embeddings looked up, norms, not counted): 2N for the forward and 2N for the input gradient
// of the frozen weights. 12·L·T·(NH·D) is attention (QKᵀ and PV, 2 matmuls × 2 FLOPs × T per
// token, forward plus twice that backward), counting the full T×T square, masked half
// included. Each adapter of in → out features costs 2r(in+out) forward and 4r(in+out)
// backward (A and B gradients plus the input gradients). MFU is flops/token × tokens/s ÷
// -peak-gflops.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/loractl/loractl/internal/backend"
	"github.com/loractl/loractl/internal/backend/cpu"
	"github.com/loractl/loractl/internal/device"
	"github.com/loractl/loractl/internal/engine"
	"github.com/loractl/loractl/internal/lora"
	"github.com/loractl/loractl/internal/model"
	"github.com/loractl/loractl/internal/optim"
	"github.com/loractl/loractl/internal/safetensors"
	"github.com/loractl/loractl/internal/synth"
)

// shape is a Llama-family model shape.
type shape struct {
	Name                   string
	Dim, Layers, Heads, KV int
	FFN, Vocab             int
}

var shapes = map[string]shape{
	"stories15m": {Name: "stories15m", Dim: 288, Layers: 6, Heads: 6, KV: 6, FFN: 768, Vocab: 32000},
	"smollm135m": {Name: "smollm135m", Dim: 576, Layers: 30, Heads: 9, KV: 3, FFN: 1536, Vocab: 49152},
	// Llama-3.2-1B's shape (tied embeddings), for the GPU comparison with PyTorch+PEFT.
	"llama1b": {Name: "llama1b", Dim: 2048, Layers: 16, Heads: 32, KV: 8, FFN: 8192, Vocab: 128256},
}

type options struct {
	shape      string
	device     string // cpu (the default), or cuda / cuda:N with a -tags cuda build
	dtype      string // f32 or bf16: how the frozen weights are stored and kept
	threads    int
	warmup     int
	steps      int
	batch      int
	seq        int
	r          int
	alpha      float64
	lr         float64
	seed       uint64
	dataSeed   uint64
	peakGFLOPS float64
	gen        string // internal: write the model to this folder and exit
	keep       string // write the model here and keep it (default: a temporary folder)
	cpuprofile string // write a CPU profile of the timed steps here
	memprofile string // write an allocation profile of the timed steps here
}

// Result is the JSON line benchstep prints (the same fields as bench_torch.py).
type Result struct {
	Impl           string  `json:"impl"`
	Device         string  `json:"device"`
	Shape          string  `json:"shape"`
	DType          string  `json:"dtype"`
	Threads        int     `json:"threads"`
	Batch          int     `json:"batch"`
	Seq            int     `json:"seq"`
	R              int     `json:"r"`
	Warmup         int     `json:"warmup"`
	Steps          int     `json:"steps"`
	Params         int64   `json:"params"`
	Trainable      int64   `json:"trainable"`
	TokensPerS     float64 `json:"tokens_per_s"`
	SecondsPerStep float64 `json:"s_per_step"`
	StepMinS       float64 `json:"s_per_step_min"`
	PeakRSSMiB     float64 `json:"peak_rss_mib"`      // VmHWM of the whole process at the end
	StepRSSMiB     float64 `json:"step_peak_rss_mib"` // VmHWM since the end of setup (-1: unknown)
	AllocsPerStep  float64 `json:"allocs_per_step"`   // heap allocations per timed step (Go runtime)
	FLOPsPerToken  float64 `json:"flops_per_token"`
	GFLOPS         float64 `json:"gflops"`
	PeakGFLOPS     float64 `json:"peak_gflops"`
	MFU            float64 `json:"mfu"`
	LossFirst      float64 `json:"loss_first"`
	LossLast       float64 `json:"loss_last"`
	LnVocab        float64 `json:"ln_vocab"`
}

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "benchstep:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	var o options
	fs := flag.NewFlagSet("benchstep", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.shape, "shape", "stories15m", "model shape: stories15m, smollm135m or llama1b")
	fs.StringVar(&o.device, "device", "cpu", "backend: cpu, or cuda / cuda:N (needs a -tags cuda build)")
	fs.StringVar(&o.dtype, "dtype", "f32", "frozen base weights: f32, or bf16 (stored as BF16 and kept BF16 in memory)")
	fs.IntVar(&o.threads, "threads", 2, "worker threads of the cpu backend (GOMAXPROCS is set to at least this)")
	fs.IntVar(&o.warmup, "warmup", 2, "untimed steps first")
	fs.IntVar(&o.steps, "steps", 3, "timed steps")
	fs.IntVar(&o.batch, "batch", 4, "rows per step")
	fs.IntVar(&o.seq, "seq", 256, "tokens per row")
	fs.IntVar(&o.r, "r", 16, "LoRA rank")
	fs.Float64Var(&o.alpha, "alpha", 32, "LoRA alpha (scale alpha/r)")
	fs.Float64Var(&o.lr, "lr", 2e-4, "AdamW learning rate")
	fs.Uint64Var(&o.seed, "seed", 1, "seed of the weights and of LoRA A")
	fs.Uint64Var(&o.dataSeed, "data-seed", 1234, "splitmix64 seed of the token ids (same as bench_torch.py)")
	fs.Float64Var(&o.peakGFLOPS, "peak-gflops", 436, "machine peak GFLOP/s for MFU (218 per AVX-512 core here)")
	fs.StringVar(&o.gen, "gen", "", "internal: write the random model to this folder and exit")
	fs.StringVar(&o.cpuprofile, "cpuprofile", "", "write a CPU profile of the timed steps to this file (go tool pprof)")
	fs.StringVar(&o.memprofile, "memprofile", "", "write an allocation profile (every allocation) of the timed steps to this file")
	fs.StringVar(&o.keep, "model-dir", "", "write the model here and keep it (default: a temporary folder, removed)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	sh, ok := shapes[o.shape]
	if !ok {
		return fmt.Errorf("unknown -shape %q (want stories15m, smollm135m or llama1b)", o.shape)
	}
	if o.dtype != "f32" && o.dtype != "bf16" {
		return fmt.Errorf("unknown -dtype %q (want f32 or bf16)", o.dtype)
	}
	if o.threads < 1 || o.steps < 1 || o.warmup < 0 || o.batch < 1 || o.seq < 2 || o.r < 1 {
		return errors.New("-threads, -steps, -batch, -r must be ≥ 1, -seq ≥ 2, -warmup ≥ 0")
	}
	if o.gen != "" {
		return writeModel(o.gen, sh, o.seq, o.seed, o.dtype)
	}

	dir := o.keep
	if dir == "" {
		tmp, err := os.MkdirTemp("", "benchstep-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	if err := genChild(dir, o, stderr); err != nil {
		return err
	}
	res, err := bench(dir, sh, o)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	return enc.Encode(res)
}

// genChild writes the model in a child process (this binary with -gen) unless dir already
// holds one, so the parent's peak RSS does not include the generator's buffers.
func genChild(dir string, o options, stderr io.Writer) error {
	if _, err := os.Stat(filepath.Join(dir, "model.safetensors")); err == nil && o.keep != "" {
		if b, err := os.ReadFile(filepath.Join(dir, "config.json")); err == nil {
			var c synth.LlamaConfig
			if json.Unmarshal(b, &c) == nil && reflect.DeepEqual(c, configFor(shapes[o.shape], o.seq, o.dtype)) {
				return nil // the kept model of this shape and dtype
			}
		}
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(exe, "-gen", dir, "-shape", o.shape, "-seq", strconv.Itoa(o.seq),
		"-seed", strconv.FormatUint(o.seed, 10), "-dtype", o.dtype)
	cmd.Stdout, cmd.Stderr = stderr, stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("generate the model in %s: %w", dir, err)
	}
	return nil
}

// configFor is the config.json of the benchmark model of shape s stored as dtype.
func configFor(s shape, seq int, dtype string) synth.LlamaConfig {
	c := s.llama().Config(max(seq, 2048), 0.02)
	if dtype == "bf16" {
		c.TorchDType = "bfloat16"
	}
	return c
}

func (s shape) llama() synth.LlamaShape {
	return synth.LlamaShape{Dim: s.Dim, Layers: s.Layers, Heads: s.Heads, KVHeads: s.KV, Hidden: s.FFN, Vocab: s.Vocab}
}

// writeModel writes config.json and model.safetensors (F32, or every tensor BF16 for dtype
// bf16; tied lm_head not stored).
func writeModel(dir string, s shape, seq int, seed uint64, dtype string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	cb, err := json.MarshalIndent(configFor(s, seq, dtype), "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), append(cb, '\n'), 0o644); err != nil {
		return err
	}
	ts, _, err := synth.LlamaTensors(s.llama(), 0.02, seed)
	if err != nil {
		return err
	}
	if dtype == "bf16" {
		for i := range ts {
			v, err := safetensors.DecodeFloat32(ts[i].DType, ts[i].Data) // (numel,)
			if err != nil {
				return err
			}
			ts[i].Data = nil // let the F32 bytes go before the BF16 copy is made
			if ts[i].Data, err = safetensors.EncodeFloat32(safetensors.BF16, v); err != nil {
				return err
			}
			ts[i].DType = safetensors.BF16
		}
	}
	return safetensors.Write(filepath.Join(dir, "model.safetensors"), ts, map[string]string{"format": "pt"})
}

// splitmix64 is the token generator shared with bench_torch.py.
type splitmix64 uint64

func (s *splitmix64) next() uint64 {
	*s += 0x9e3779b97f4a7c15
	z := uint64(*s)
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// makeBatch returns the benchmark batch: B rows of T inputs and their next tokens.
func makeBatch(seed uint64, B, T, V int) engine.Batch {
	g := splitmix64(seed)
	ids := make([]int, B*(T+1))
	for i := range ids {
		ids[i] = int(g.next() % uint64(V))
	}
	b := engine.Batch{Tokens: make([]int, B*T), Targets: make([]int, B*T), B: B, T: T}
	for r := 0; r < B; r++ {
		row := ids[r*(T+1) : (r+1)*(T+1)]
		copy(b.Tokens[r*T:(r+1)*T], row[:T])
		copy(b.Targets[r*T:(r+1)*T], row[1:])
	}
	return b
}

// FLOPsPerToken is the model FLOPs of one trained token (see the package comment).
func FLOPsPerToken(c *model.Config, mods []lora.Module, r, T int) float64 {
	C, F, V, L := float64(c.HiddenSize), float64(c.IntermediateSize), float64(c.VocabSize), float64(c.NumHiddenLayers)
	Q, KV := float64(c.QDim()), float64(c.KVDim())
	n := L*(Q*C+2*KV*C+C*Q+3*C*F) + V*C // block Linears + lm_head
	f := 4*n + 12*L*float64(T)*Q
	for _, m := range mods {
		f += 6 * float64(r) * float64(m.In+m.Out)
	}
	return f
}

func bench(dir string, sh shape, o options) (*Result, error) {
	if runtime.GOMAXPROCS(0) < o.threads {
		runtime.GOMAXPROCS(o.threads)
	}
	var be backend.Backend
	if o.device == "cpu" {
		c := cpu.New()
		c.SetThreads(o.threads)
		be = c
	} else {
		var err error
		if be, err = device.Open(o.device, os.Stderr); err != nil {
			return nil, err
		}
	}
	m, err := model.LoadWith(dir, be, model.LoadOptions{KeepBF16: o.dtype == "bf16"})
	if err != nil {
		return nil, err
	}
	defer m.Close()
	mc := m.Config()
	mods, err := lora.Select(lora.Modules(mc), []string{"all-linear"}, nil)
	if err != nil {
		return nil, err
	}
	ad, err := lora.New(lora.Config{R: o.r, Alpha: o.alpha, Base: dir}, mods, lora.InitDefault,
		rand.New(rand.NewPCG(o.seed, 0x10a)))
	if err != nil {
		return nil, err
	}
	eng, err := engine.New(m, ad, engine.Options{Method: engine.MethodLoRA, Seed: o.seed})
	if err != nil {
		return nil, err
	}
	defer eng.Close()
	adam, err := optim.NewAdamW(optim.DefaultAdamW(), []optim.Group{{Params: eng.Params(), LRScale: 1}})
	if err != nil {
		return nil, err
	}
	batch := makeBatch(o.dataSeed, o.batch, o.seq, mc.VocabSize)
	grads := optim.Grads([]optim.Group{{Params: eng.Params()}})
	targets := len(batch.Targets)

	step := func() (float64, error) {
		eng.ZeroGrads()
		sum, _, err := eng.ForwardBackward(batch, float32(1/float64(targets)))
		if err != nil {
			return 0, err
		}
		if err := eng.SyncGrads(); err != nil {
			return 0, err
		}
		optim.ClipGlobalNorm(grads, 1.0)
		adam.Step(o.lr)
		if err := eng.SyncParams(); err != nil {
			return 0, err
		}
		return sum / float64(targets), nil
	}

	runtime.GC()
	debug.FreeOSMemory()
	stepRSS := resetHWM()
	dtype := "fp32"
	if o.dtype == "bf16" {
		dtype = "bf16" // frozen weights in BF16; LoRA, activations and arithmetic in F32
	}
	res := &Result{Impl: "loractl", Device: be.Name(), Shape: sh.Name, DType: dtype, Threads: o.threads, Batch: o.batch,
		Seq: o.seq, R: o.r, Warmup: o.warmup, Steps: o.steps, Params: mc.NumParams(),
		Trainable: eng.NumTrainable(), PeakGFLOPS: o.peakGFLOPS, LnVocab: math.Log(float64(mc.VocabSize))}
	first := true
	for i := 0; i < o.warmup; i++ {
		loss, err := step()
		if err != nil {
			return nil, err
		}
		if first {
			res.LossFirst, first = loss, false
		}
	}
	if o.cpuprofile != "" {
		f, err := os.Create(o.cpuprofile)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return nil, err
		}
		defer pprof.StopCPUProfile()
	}
	var total time.Duration
	res.StepMinS = math.Inf(1)
	if o.memprofile != "" {
		runtime.MemProfileRate = 1
		defer func() {
			runtime.GC() // the profile covers allocations up to the last collection
			if f, err := os.Create(o.memprofile); err == nil {
				pprof.Lookup("allocs").WriteTo(f, 0)
				f.Close()
			}
		}()
	}
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	for i := 0; i < o.steps; i++ {
		t0 := time.Now()
		loss, err := step()
		d := time.Since(t0)
		if err != nil {
			return nil, err
		}
		total += d
		res.StepMinS = min(res.StepMinS, d.Seconds())
		if first {
			res.LossFirst, first = loss, false
		}
		res.LossLast = loss
	}
	runtime.ReadMemStats(&ms1)
	res.AllocsPerStep = float64(ms1.Mallocs-ms0.Mallocs) / float64(o.steps)
	res.SecondsPerStep = total.Seconds() / float64(o.steps)
	res.TokensPerS = float64(o.batch*o.seq) / res.SecondsPerStep
	res.FLOPsPerToken = FLOPsPerToken(mc, mods, o.r, o.seq)
	res.GFLOPS = res.FLOPsPerToken * res.TokensPerS / 1e9
	res.MFU = res.GFLOPS / o.peakGFLOPS
	res.PeakRSSMiB = vmHWM()
	res.StepRSSMiB = -1
	if stepRSS {
		res.StepRSSMiB = res.PeakRSSMiB
		res.PeakRSSMiB = math.Max(res.PeakRSSMiB, setupHWM)
	}
	return res, nil
}

// setupHWM is the peak RSS before resetHWM cleared it.
var setupHWM float64

// resetHWM records the peak RSS so far and resets the kernel's VmHWM to the current RSS
// (writing 5 to /proc/self/clear_refs); false when the kernel does not allow it.
func resetHWM() bool {
	setupHWM = vmHWM()
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		return false
	}
	return true
}

// vmHWM returns the process's peak resident set size in MiB from /proc/self/status (-1 when
// unreadable).
func vmHWM() float64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return -1
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			if err != nil {
				return -1
			}
			return kb / 1024
		}
	}
	return -1
}
