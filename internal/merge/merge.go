// Package merge folds LoRA adapters into the weights of their base model and writes the result
// as a complete Hugging Face model folder (config.json, safetensors, tokenizer files,
// generation_config.json), for `loractl merge`.
//
// The base is read tensor by tensor from its memory-mapped checkpoint and each output tensor is
// written as soon as it is computed, row by row where the method allows it, so the memory used
// does not grow with the model: see docs/MERGE.md for the methods and docs/PERF.md for the
// measured peak.
//
// Every method computes W' = W0 + Δ in float64 from the float32 adapter factors and rounds W'
// once to the output dtype.
package merge

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/loractl/loractl/internal/lora"
	"github.com/loractl/loractl/internal/model"
	"github.com/loractl/loractl/internal/quant"
	"github.com/loractl/loractl/internal/safetensors"
)

// Method is how the adapters' updates are combined.
type Method string

// The merge methods.
const (
	Linear     Method = "linear"      // Σ wᵢ·sᵢ·BᵢAᵢ
	Cat        Method = "cat"         // ranks concatenated (equal to linear as a dense merge)
	SVD        Method = "svd"         // the linear sum truncated to --rank by SVD
	TIES       Method = "ties"        // trim to density, elect sign, disjoint mean
	DARELinear Method = "dare_linear" // random drop with rescale, then the linear sum
	DARETIES   Method = "dare_ties"   // random drop with rescale, then TIES' elect and mean
)

// Methods lists every method in the order the help shows them.
var Methods = []Method{Linear, Cat, SVD, TIES, DARELinear, DARETIES}

// DefaultMaxShardSize is --max-shard-size's default, as transformers' save_pretrained: 5 GB.
const DefaultMaxShardSize = 5_000_000_000

// AdapterSpec is one --adapter: a PEFT adapter folder and its weight wᵢ.
type AdapterSpec struct {
	Dir    string
	Weight float64
}

// Options describe one merge.
type Options struct {
	Base     string
	Adapters []AdapterSpec
	Out      string
	Method   Method  // empty: linear
	Density  float64 // ties, dare_*: the fraction of each update that is kept
	Rank     int     // svd: the rank of the result; 0: the largest adapter rank
	// Truncate keeps the leading Truncate ranks of every adapter before merging (DyLoRA's
	// nested sub-adapters, `merge --rank k` of a method other than svd); 0: all ranks.
	Truncate     int
	Seed         uint64 // dare_*: the drop masks' seed
	DType        string // f32, bf16 or f16; empty: the base's dtype
	MaxShardSize int64  // bytes per safetensors shard; 0: DefaultMaxShardSize
	Overwrite    bool   // replace an existing Out
	Log          io.Writer

	// create opens a new output file; tests replace it to inject write failures.
	create func(path string) (outFile, error)
}

// outFile is what the merge writes into.
type outFile interface {
	io.Writer
	Sync() error
	Close() error
}

// AdapterSummary describes one merged adapter.
type AdapterSummary struct {
	Dir     string  `json:"dir"`
	Weight  float64 `json:"weight"`
	Rank    int     `json:"r"`
	Scale   float64 `json:"scale"`
	Modules int     `json:"modules"`
}

// Summary is what a merge did, for the --json output and the stderr report.
type Summary struct {
	Out                string           `json:"out"`
	Method             Method           `json:"method"`
	DType              string           `json:"dtype"`
	Adapters           []AdapterSummary `json:"adapters"`
	Tensors            int              `json:"tensors"`
	AdaptedTensors     int              `json:"adapted_tensors"`
	Files              []string         `json:"files"`
	OutputBytes        int64            `json:"output_tensor_bytes"`
	BaseBytes          int64            `json:"base_tensor_bytes"`
	LargestTensorBytes int64            `json:"largest_tensor_bytes"`
	AdapterBytes       int64            `json:"adapter_bytes"`
	PeakBufferBytes    int64            `json:"peak_buffer_bytes"`
	PeakHeapBytes      uint64           `json:"peak_heap_inuse_bytes"`
	StartHeapBytes     uint64           `json:"start_heap_inuse_bytes"`
	Quantized          string           `json:"dequantized_from,omitempty"`
	Seconds            float64          `json:"seconds"`
	Notes              []string         `json:"notes,omitempty"`
}

// merger is the state of one Run.
type merger struct {
	opt     Options
	cfg     *model.Config
	ck      *safetensors.Checkpoint
	qi      *quant.Info // the base's quantization, or nil
	outDT   safetensors.DType
	terms   map[string][]term // weight name → the adapters' updates of it
	rank    int               // svd target rank
	sum     *Summary
	bufCur  int64
	bufPeak int64
	heap    uint64

	acc  []float64 // row-block buffers reused across tensors (see buffers)
	obuf []byte
	qbuf []float32
}

// Run merges opt.Adapters into opt.Base and writes opt.Out. On any error nothing is left at
// opt.Out (an existing folder is untouched) and the temporary folder is removed.
func Run(opt Options) (*Summary, error) {
	start := time.Now()
	if opt.Log == nil {
		opt.Log = io.Discard
	}
	if opt.create == nil {
		opt.create = func(path string) (outFile, error) {
			return os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		}
	}
	if opt.Method == "" {
		opt.Method = Linear
	}
	if opt.MaxShardSize == 0 {
		opt.MaxShardSize = DefaultMaxShardSize
	}
	if err := checkOptions(&opt); err != nil {
		return nil, err
	}
	mg := &merger{opt: opt, terms: map[string][]term{}, sum: &Summary{Out: opt.Out, Method: opt.Method}}
	mg.heap = heapInuse()
	mg.sum.StartHeapBytes = mg.heap

	cfg, quantized, err := loadBaseConfig(opt.Base)
	if err != nil {
		return nil, err
	}
	mg.cfg = cfg
	ck, err := safetensors.OpenCheckpoint(opt.Base)
	if err != nil {
		return nil, fmt.Errorf("base %s: %w", opt.Base, err)
	}
	defer ck.Close()
	mg.ck = ck
	if mg.qi, err = quant.ReadInfo(ck); err != nil {
		return nil, err
	}
	if quantized && mg.qi == nil {
		return nil, fmt.Errorf("base %s: config.json has a loractl quantization_config but the safetensors metadata has no %s; re-create the folder with loractl quantize", opt.Base, quant.MetadataKey)
	}
	if err := mg.loadAdapters(); err != nil {
		return nil, err
	}
	if err := mg.chooseDType(); err != nil {
		return nil, err
	}
	if mg.qi != nil {
		mg.sum.Quantized = fmt.Sprintf("%s (group %d)", mg.qi.Format, mg.qi.GroupSize)
		if mg.qi.DoubleQuant {
			mg.sum.Quantized = fmt.Sprintf("%s (group %d, double quantization)", mg.qi.Format, mg.qi.GroupSize)
		}
		mg.note(fmt.Sprintf("the base is quantized (%s): its %d quantized Linear weights are dequantized to %s before the adapters are added",
			mg.sum.Quantized, len(mg.qi.Shapes), mg.outDT))
	}
	if err := mg.write(); err != nil {
		return nil, err
	}
	mg.sum.PeakBufferBytes = mg.bufPeak
	mg.sum.PeakHeapBytes = mg.heap
	mg.sum.Seconds = time.Since(start).Seconds()
	return mg.sum, nil
}

// checkOptions validates what does not need the files.
func checkOptions(o *Options) error {
	if o.Base == "" {
		return errors.New("merge: no base model; pass --base DIR")
	}
	if o.Out == "" {
		return errors.New("merge: no output folder; pass --out DIR")
	}
	if len(o.Adapters) == 0 {
		return errors.New("merge: no adapter; pass --adapter DIR[:weight] at least once")
	}
	if !slices.Contains(Methods, o.Method) {
		return fmt.Errorf("merge: unknown method %q; choose one of %s", o.Method, methodList())
	}
	for _, a := range o.Adapters {
		if math.IsNaN(a.Weight) || math.IsInf(a.Weight, 0) {
			return fmt.Errorf("merge: adapter %s has weight %v; a weight must be a finite number", a.Dir, a.Weight)
		}
	}
	switch o.Method {
	case TIES, DARELinear, DARETIES:
		if !(o.Density > 0 && o.Density <= 1) {
			return fmt.Errorf("merge: --density %v is out of range for %s; it is the fraction of each update kept, 0 < density <= 1", o.Density, o.Method)
		}
	}
	if o.Rank < 0 {
		return fmt.Errorf("merge: --rank %d is negative; give a rank of 1 or more (0: the largest adapter rank)", o.Rank)
	}
	if o.MaxShardSize < 0 {
		return fmt.Errorf("merge: --max-shard-size %d is negative", o.MaxShardSize)
	}
	switch o.DType {
	case "", "f32", "bf16", "f16":
	default:
		return fmt.Errorf("merge: --dtype %q is not supported; choose bf16, f16 or f32", o.DType)
	}
	// The output must not be, or hold, an input: --overwrite would delete it.
	out, err := filepath.Abs(o.Out)
	if err != nil {
		return fmt.Errorf("merge: --out %s: %w", o.Out, err)
	}
	inputs := []string{o.Base}
	for _, a := range o.Adapters {
		inputs = append(inputs, a.Dir)
	}
	for _, in := range inputs {
		p, err := filepath.Abs(in)
		if err != nil {
			continue
		}
		if p == out || strings.HasPrefix(p, out+string(filepath.Separator)) {
			return fmt.Errorf("merge: --out %s is (or contains) the input %s; write the merged model to a new folder", o.Out, in)
		}
	}
	if _, err := os.Lstat(o.Out); err == nil && !o.Overwrite {
		return fmt.Errorf("merge: %s already exists; pass --overwrite to replace it, or choose another --out", o.Out)
	}
	return nil
}

func methodList() string {
	s := make([]string, len(Methods))
	for i, m := range Methods {
		s[i] = string(m)
	}
	return strings.Join(s, ", ")
}

// loadBaseConfig reads the base's config.json. A base quantized by loractl quantize
// (quant_method "loractl") is accepted and dequantized while merging; other quantization
// methods are refused.
func loadBaseConfig(dir string) (*model.Config, bool, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, false, fmt.Errorf("base %s: %w; pass --base with a Hugging Face model folder", dir, err)
	}
	if !st.IsDir() {
		return nil, false, fmt.Errorf("base %s: not a folder; pass --base with the folder that holds config.json and the .safetensors files", dir)
	}
	quantized := false
	raw, err := os.ReadFile(filepath.Join(dir, model.ConfigFile))
	if err == nil {
		var top map[string]json.RawMessage
		if json.Unmarshal(raw, &top) == nil {
			if q, ok := top["quantization_config"]; ok && string(q) != "null" {
				var qc struct {
					Method string `json:"quant_method"`
				}
				_ = json.Unmarshal(q, &qc)
				if qc.Method != quant.QuantMethod {
					return nil, false, fmt.Errorf("base %s: config.json has a quantization_config with quant_method %q: merging onto a base quantized that way is not supported (only loractl quantize folders are); merge onto the unquantized base model", dir, qc.Method)
				}
				quantized = true
			}
		}
	}
	cfg, err := model.LoadConfig(dir)
	return cfg, quantized, err
}

// baseQuantized returns the original shape of name when the base stores it quantized.
func (mg *merger) baseQuantized(name string) ([]int, bool) {
	if mg.qi == nil {
		return nil, false
	}
	s, ok := mg.qi.Shapes[name]
	return s, ok
}

// baseShape returns the shape of base tensor name as the model sees it (the original shape of a
// quantized weight), and whether it holds float values (quantized weights count as float).
func (mg *merger) baseShape(name string) ([]int, bool, bool) {
	if mg.qi != nil {
		if s, ok := mg.qi.Shapes[name]; ok {
			return s, true, true
		}
	}
	info, ok := mg.ck.Info(name)
	return info.Shape, info.DType.IsFloat(), ok
}

// paperScale returns s = alpha/r (alpha/√r with rsLoRA) of one pair, in float64.
func paperScale(a *lora.Adapter, p *lora.Pair) float64 {
	alpha, r := a.AlphaOf(p), float64(a.RankOf(p))
	if a.Config.RSLoRA {
		return alpha / math.Sqrt(r)
	}
	return alpha / r
}

// loadAdapters reads and checks every adapter and groups their updates by weight.
func (mg *merger) loadAdapters() error {
	maxRank := 0
	for i, spec := range mg.opt.Adapters {
		a, err := lora.LoadFor(spec.Dir, mg.cfg, "fix: pass the --base this adapter was trained on")
		if err != nil {
			return err
		}
		file := filepath.Join(spec.Dir, lora.WeightsFile)
		if k := mg.opt.Truncate; k > 0 {
			if a.Config.Method != "dylora" {
				return fmt.Errorf("%s: --rank %d with --method %s truncates a DyLoRA adapter, but this one was not trained with lora.method dylora (its leading ranks were not trained to work alone); drop --rank, or use --method svd --rank %d for the best rank-%d merge", spec.Dir, k, mg.opt.Method, k, k)
			}
			if err := a.Truncate(k); err != nil {
				return fmt.Errorf("%s: --rank: %w", spec.Dir, err)
			}
		}
		s := paperScale(a, a.Pairs[0])
		for _, p := range a.Pairs {
			s := paperScale(a, p)
			w := p.Module.Weight()
			shape, isFloat, ok := mg.baseShape(w)
			if !ok {
				return fmt.Errorf("%s: the adapter adapts %s but the base checkpoint %s has no tensor %s; pass the --base this adapter was trained on", spec.Dir, p.Module.Path, mg.opt.Base, w)
			}
			if !slices.Equal(shape, []int{p.Module.Out, p.Module.In}) {
				return fmt.Errorf("%s: %s is %v in the base checkpoint but the adapter expects [%d %d]; pass the --base this adapter was trained on", spec.Dir, w, shape, p.Module.Out, p.Module.In)
			}
			if !isFloat {
				return fmt.Errorf("base %s: %s is not a float tensor; only float weights can be merged into", mg.opt.Base, w)
			}
			for _, f := range []struct {
				which string
				v     []float32
				shape []int
			}{{"lora_A", p.A, []int{a.RankOf(p), p.Module.In}}, {"lora_B", p.B, []int{p.Module.Out, a.RankOf(p)}}} {
				if j := firstNonFinite32(f.v); j >= 0 {
					return fmt.Errorf("%s: tensor base_model.model.%s.%s.weight holds %v at %s; the adapter is corrupt (its training diverged?): retrain it or drop it from the merge",
						file, p.Module.Path, f.which, f.v[j], describeIndex(j, f.shape))
				}
			}
			if p.M != nil {
				if mg.opt.Method != Linear || spec.Weight != 1 {
					return fmt.Errorf("%s: a DoRA adapter (use_dora) folds into the base as diag(m/‖W0 + s·BA‖)·(W0 + s·BA), which is not a sum; merge it with --method linear at weight 1 (got --method %s, weight %g)", spec.Dir, mg.opt.Method, spec.Weight)
				}
				if len(mg.terms[w]) > 0 {
					return fmt.Errorf("%s: %s is also adapted by %s; a DoRA adapter must be the only one on a weight (merge the others in a second run)", spec.Dir, w, mg.opt.Adapters[mg.terms[w][0].adapter].Dir)
				}
			} else if ts := mg.terms[w]; len(ts) > 0 && ts[0].m != nil {
				return fmt.Errorf("%s: %s is also adapted by the DoRA adapter %s; a DoRA adapter must be the only one on a weight (merge the others in a second run)", spec.Dir, w, mg.opt.Adapters[ts[0].adapter].Dir)
			}
			mg.terms[w] = append(mg.terms[w], term{adapter: i, r: a.RankOf(p), m: p.M, a: p.A, b: p.B, c: spec.Weight * s})
			mg.sum.AdapterBytes += int64(4 * (len(p.A) + len(p.B)))
		}
		if mg.opt.Method == Cat && i > 0 && a.Config.R != mg.sum.Adapters[0].Rank {
			return fmt.Errorf("merge: --method cat needs adapters of one rank, but %s has r=%d and %s has r=%d; use --method linear (the same dense weights for any ranks) or svd",
				mg.sum.Adapters[0].Dir, mg.sum.Adapters[0].Rank, spec.Dir, a.Config.R)
		}
		maxRank = max(maxRank, a.MaxRank())
		mg.sum.Adapters = append(mg.sum.Adapters, AdapterSummary{Dir: spec.Dir, Weight: spec.Weight, Rank: a.Config.R, Scale: s, Modules: len(a.Pairs)})
	}
	mg.rank = mg.opt.Rank
	if mg.rank == 0 {
		mg.rank = maxRank
	}
	if mg.opt.Method != SVD && mg.opt.Rank != 0 {
		return fmt.Errorf("merge: --rank applies to --method svd only (the %s merge is dense)", mg.opt.Method)
	}
	mg.sum.AdaptedTensors = len(mg.terms)
	return nil
}

// chooseDType picks the output dtype: --dtype, or the dtype that holds most of the base's
// float bytes.
func (mg *merger) chooseDType() error {
	switch mg.opt.DType {
	case "f32":
		mg.outDT = safetensors.F32
	case "bf16":
		mg.outDT = safetensors.BF16
	case "f16":
		mg.outDT = safetensors.F16
	default:
		bytes := map[safetensors.DType]int64{}
		for _, n := range mg.ck.Names() {
			info, _ := mg.ck.Info(n)
			if info.DType.IsFloat() {
				bytes[info.DType] += info.NumBytes()
			}
		}
		best := safetensors.F32
		var most int64 = -1
		for _, dt := range []safetensors.DType{safetensors.F32, safetensors.BF16, safetensors.F16, safetensors.F64, safetensors.F8E4M3, safetensors.F8E5M2} {
			if bytes[dt] > most {
				best, most = dt, bytes[dt]
			}
		}
		switch best {
		case safetensors.F32, safetensors.BF16, safetensors.F16:
			mg.outDT = best
		default:
			mg.outDT = safetensors.F32
			mg.note(fmt.Sprintf("the base is stored as %s; writing F32 (choose another with --dtype)", best))
		}
	}
	mg.sum.DType = dtypeFlag(mg.outDT)
	return nil
}

func dtypeFlag(dt safetensors.DType) string {
	switch dt {
	case safetensors.BF16:
		return "bf16"
	case safetensors.F16:
		return "f16"
	}
	return "f32"
}

func torchDType(dt safetensors.DType) string {
	switch dt {
	case safetensors.BF16:
		return "bfloat16"
	case safetensors.F16:
		return "float16"
	}
	return "float32"
}

// note records a remark for the summary and prints it on the log.
func (mg *merger) note(s string) {
	mg.sum.Notes = append(mg.sum.Notes, s)
	fmt.Fprintf(mg.opt.Log, "merge: %s\n", s)
}

// alloc and free account for the merge's own buffers (the high-water mark in the summary).
func (mg *merger) alloc(n int64) { mg.bufCur += n; mg.bufPeak = max(mg.bufPeak, mg.bufCur) }
func (mg *merger) free(n int64)  { mg.bufCur -= n }

// sampleHeap records the heap in use if it is a new high.
func (mg *merger) sampleHeap() { mg.heap = max(mg.heap, heapInuse()) }

func heapInuse() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// layerRe finds the block index in a tensor name.
var layerRe = regexp.MustCompile(`^model\.layers\.(\d+)\.`)

// naturalOrder sorts tensor names as a model lists them: embeddings, blocks in numeric order,
// then everything else (final norm, lm_head) by name.
func naturalOrder(names []string) []string {
	type key struct {
		group, layer int
		name         string
	}
	keyOf := func(n string) key {
		if strings.HasPrefix(n, "model.embed_tokens.") {
			return key{0, 0, n}
		}
		if m := layerRe.FindStringSubmatch(n); m != nil {
			l, _ := strconv.Atoi(m[1])
			return key{1, l, n}
		}
		if strings.HasPrefix(n, "lm_head.") {
			return key{3, 0, n}
		}
		return key{2, 0, n}
	}
	out := slices.Clone(names)
	sort.SliceStable(out, func(i, j int) bool {
		a, b := keyOf(out[i]), keyOf(out[j])
		if a.group != b.group {
			return a.group < b.group
		}
		if a.layer != b.layer {
			return a.layer < b.layer
		}
		return a.name < b.name
	})
	return out
}

// shard is one output safetensors file.
type shard struct {
	file    string
	tensors []safetensors.TensorInfo // file order, offsets set
}

// plan assigns the output tensors to shards of at most maxBytes tensor bytes (a tensor larger
// than that gets a shard of its own), in model order, and lays each shard out.
func (mg *merger) plan() ([]shard, int64) {
	var shards [][]safetensors.TensorInfo
	var cur []safetensors.TensorInfo
	var curBytes, total int64
	for _, n := range naturalOrder(mg.ck.Names()) {
		info, _ := mg.ck.Info(n)
		mg.sum.BaseBytes += info.NumBytes()
		if mg.qi != nil && mg.qi.IsPart(n) {
			continue // the scales of a quantized weight: folded into its dequantized values
		}
		shape, isFloat, _ := mg.baseShape(n)
		dt := info.DType
		if isFloat {
			dt = mg.outDT
		}
		t := safetensors.TensorInfo{Name: n, DType: dt, Shape: slices.Clone(shape)}
		size := t.NumBytes()
		mg.sum.LargestTensorBytes = max(mg.sum.LargestTensorBytes, info.NumBytes(), size)
		if len(cur) > 0 && curBytes+size > mg.opt.MaxShardSize {
			shards = append(shards, cur)
			cur, curBytes = nil, 0
		}
		cur = append(cur, t)
		curBytes += size
		total += size
	}
	if len(cur) > 0 || len(shards) == 0 {
		shards = append(shards, cur)
	}
	out := make([]shard, len(shards))
	for i, ts := range shards {
		// File order as the safetensors library writes: larger elements first, then by name.
		sort.SliceStable(ts, func(a, b int) bool {
			if sa, sb := ts[a].DType.Size(), ts[b].DType.Size(); sa != sb {
				return sa > sb
			}
			return ts[a].Name < ts[b].Name
		})
		var pos int64
		for j := range ts {
			ts[j].Begin, ts[j].End = pos, pos+ts[j].NumBytes()
			pos = ts[j].End
		}
		name := safetensors.SingleFile
		if len(shards) > 1 {
			name = fmt.Sprintf("model-%05d-of-%05d.safetensors", i+1, len(shards))
		}
		out[i] = shard{file: name, tensors: ts}
	}
	return out, total
}

// write produces the whole output folder in a temporary folder beside Out and moves it into
// place at the end.
func (mg *merger) write() (err error) {
	out := filepath.Clean(mg.opt.Out)
	parent := filepath.Dir(out)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return fmt.Errorf("merge: --out %s: %w", mg.opt.Out, err)
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(out)+".tmp-")
	if err != nil {
		return fmt.Errorf("merge: create a temporary folder beside %s: %w", out, err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
			if errors.Is(err, syscall.ENOSPC) {
				err = fmt.Errorf("%w (the disk is full: nothing was written to %s; free space and run again)", err, out)
			}
		}
	}()
	shards, total := mg.plan()
	mg.sum.OutputBytes = total
	for _, sh := range shards {
		mg.sum.Tensors += len(sh.tensors)
		if err := mg.writeShard(filepath.Join(tmp, sh.file), sh); err != nil {
			return err
		}
		mg.sum.Files = append(mg.sum.Files, sh.file)
	}
	if len(shards) > 1 {
		if err := mg.writeIndex(tmp, shards, total); err != nil {
			return err
		}
	}
	if err := mg.writeSideFiles(tmp); err != nil {
		return err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return fmt.Errorf("merge: %w", err)
	}
	syncDir(tmp)
	return replaceDir(tmp, out, mg.opt.Overwrite)
}

// replaceDir renames the finished folder tmp to out. An existing out (allowed by overwrite) is
// first moved aside and removed only once the new folder is in place.
func replaceDir(tmp, out string, overwrite bool) error {
	parent := filepath.Dir(out)
	if _, err := os.Lstat(out); err == nil {
		if !overwrite {
			return fmt.Errorf("merge: %s appeared while merging; pass --overwrite to replace it", out)
		}
		old := tmp + ".old"
		if err := os.Rename(out, old); err != nil {
			return fmt.Errorf("merge: move the existing %s aside: %w", out, err)
		}
		if err := os.Rename(tmp, out); err != nil {
			os.Rename(old, out)
			return fmt.Errorf("merge: move the merged model into %s: %w", out, err)
		}
		syncDir(parent)
		if err := os.RemoveAll(old); err != nil {
			return fmt.Errorf("merge: the merged model is in %s, but removing the previous folder (%s) failed: %w", out, old, err)
		}
		return nil
	}
	if err := os.Rename(tmp, out); err != nil {
		return fmt.Errorf("merge: move the merged model into %s: %w", out, err)
	}
	syncDir(parent)
	return nil
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

// writeFile writes data to a new file at path through the create hook and syncs it.
func (mg *merger) writeFile(path string, data []byte) (err error) {
	f, err := mg.opt.create(path)
	if err != nil {
		return fmt.Errorf("merge: write %s: %w", path, err)
	}
	defer func() {
		if cerr := f.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("merge: write %s: %w", path, cerr)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("merge: write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("merge: write %s: fsync: %w", path, err)
	}
	return nil
}

// countingWriter counts the bytes that reached the file.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// writeShard streams the tensors of one shard into path.
func (mg *merger) writeShard(path string, sh shard) (err error) {
	f, err := mg.opt.create(path)
	if err != nil {
		return fmt.Errorf("merge: write %s: %w", path, err)
	}
	defer func() {
		if cerr := f.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("merge: write %s: %w", path, cerr)
		}
	}()
	cw := &countingWriter{w: f}
	w := bufio.NewWriterSize(cw, 1<<20)
	mg.alloc(1 << 20)
	defer mg.free(1 << 20)
	header := safetensors.EncodeHeader(sh.tensors, map[string]string{"format": "pt"})
	if n := len(header) - 8; n > safetensors.MaxHeaderSize {
		return fmt.Errorf("merge: %s: header of %d bytes is over the %d-byte limit; lower --max-shard-size", path, n, safetensors.MaxHeaderSize)
	}
	if _, err := w.Write(header); err != nil {
		return fmt.Errorf("merge: write %s: %w", path, err)
	}
	for _, t := range sh.tensors {
		if err := mg.writeTensor(w, t); err != nil {
			if errors.Is(err, errWrite) {
				return fmt.Errorf("merge: write %s: %w", path, errors.Unwrap(err))
			}
			return err
		}
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("merge: write %s: %w", path, err)
	}
	want := int64(len(header))
	if len(sh.tensors) > 0 {
		want += sh.tensors[len(sh.tensors)-1].End
	}
	if cw.n != want {
		return fmt.Errorf("merge: write %s: wrote %d bytes, expected %d", path, cw.n, want)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("merge: write %s: fsync: %w", path, err)
	}
	return nil
}

// errWrite wraps an error of the output writer (as opposed to one about the inputs).
var errWrite = errors.New("write failed")

type writeErr struct{ err error }

func (e writeErr) Error() string        { return e.err.Error() }
func (e writeErr) Is(target error) bool { return target == errWrite }
func (e writeErr) Unwrap() error        { return e.err }

// writeIndex writes model.safetensors.index.json for a sharded output.
func (mg *merger) writeIndex(dir string, shards []shard, total int64) error {
	wm := map[string]string{}
	for _, sh := range shards {
		for _, t := range sh.tensors {
			wm[t.Name] = sh.file
		}
	}
	js, err := json.MarshalIndent(map[string]any{"metadata": map[string]any{"total_size": total}, "weight_map": wm}, "", "  ")
	if err != nil {
		return err
	}
	return mg.writeFile(filepath.Join(dir, safetensors.IndexFile), append(js, '\n'))
}

// writeTensor computes one output tensor and streams it to w.
func (mg *merger) writeTensor(w io.Writer, out safetensors.TensorInfo) error {
	name := out.Name
	in, _ := mg.ck.Info(name)
	raw, err := mg.ck.Bytes(name)
	if err != nil {
		return fmt.Errorf("base %s: %w", mg.opt.Base, err)
	}
	file := mg.opt.Base
	if f, ok := mg.ck.File(name); ok {
		file = f.Path()
	}
	var qt *quant.Tensor // the quantized base weight, dequantized block by block
	if _, ok := mg.baseQuantized(name); ok {
		if qt, err = quant.ReadTensor(mg.ck, mg.qi, name); err != nil {
			return err
		}
		mg.alloc(qt.Bytes())
		defer mg.free(qt.Bytes())
		in = out // the original shape; values come from qt
	} else if !in.DType.IsFloat() {
		if _, err := w.Write(raw); err != nil {
			return writeErr{err}
		}
		return nil
	}
	rows, cols := 1, int(in.NumElements())
	if len(in.Shape) == 2 {
		rows, cols = in.Shape[0], in.Shape[1]
	}
	if cols == 0 || rows == 0 {
		return nil
	}

	// The delta, as low-rank factors added row by row, or (ties, dare) as a dense matrix.
	var lrs []*lowRank
	var dense []float64 // (rows, cols)
	if ts := mg.terms[name]; len(ts) > 0 {
		lrs, dense = mg.delta(name, ts, cols, rows)
		for _, l := range lrs {
			mg.alloc(int64(8 * (len(l.a) + len(l.b) + len(l.coef))))
		}
		if dense != nil {
			mg.alloc(int64(8 * len(dense)))
		}
		defer func() {
			for _, l := range lrs {
				mg.free(int64(8 * (len(l.a) + len(l.b) + len(l.coef))))
			}
			if dense != nil {
				mg.free(int64(8 * len(dense)))
			}
		}()
	}

	// Stream blocks of rows: decode the base rows, add the delta in float64, round once.
	blockRows := max(1, (1<<16)/cols)
	esz := in.DType.Size()
	osz := mg.outDT.Size()
	acc, obuf, qbuf := mg.buffers(blockRows*cols, osz, qt != nil)
	for r0 := 0; r0 < rows; r0 += blockRows {
		nr := min(blockRows, rows-r0)
		blk := acc[:nr*cols]
		if qt != nil {
			q := qbuf[:nr*cols]
			qt.DequantizeRange(q, r0*cols, (r0+nr)*cols)
			for i, v := range q {
				blk[i] = float64(v)
			}
		} else {
			src := raw[r0*cols*esz : (r0+nr)*cols*esz]
			if err := decodeInto(blk, in.DType, src); err != nil {
				return fmt.Errorf("%s: tensor %q: %w", file, name, err)
			}
			releasePages(src)
		}
		for i, v := range blk {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return fmt.Errorf("%s: tensor %q holds %v at %s; the base checkpoint is corrupt: re-download or re-convert it",
					file, name, v, describeIndex(r0*cols+i, in.Shape))
			}
		}
		for o := 0; o < nr; o++ {
			row := blk[o*cols : (o+1)*cols]
			for _, l := range lrs {
				if l.m != nil {
					l.addDoRARow(r0+o, row) // the only term of this weight
				} else {
					l.addRow(r0+o, row)
				}
			}
			if dense != nil {
				for i, d := range dense[(r0+o)*cols : (r0+o+1)*cols] {
					row[i] += d
				}
			}
		}
		ob := obuf[:nr*cols*osz]
		for i, v := range blk {
			bits := roundOnce(v, mg.outDT)
			if osz == 4 {
				binary.LittleEndian.PutUint32(ob[4*i:], bits)
			} else {
				binary.LittleEndian.PutUint16(ob[2*i:], uint16(bits))
			}
			if r := widen(bits, mg.outDT); math.IsInf(r, 0) {
				return fmt.Errorf("merge: tensor %q: the merged value %g at %s does not fit %s; write a wider --dtype (f32 or bf16) or lower the adapter weights",
					name, v, describeIndex(r0*cols+i, in.Shape), mg.outDT)
			}
		}
		if _, err := w.Write(ob); err != nil {
			return writeErr{err}
		}
	}
	mg.sampleHeap()
	releasePages(raw)
	return nil
}

// buffers returns the row-block buffers, reused across tensors (grown when a block is larger):
// float64 values, their encoding in the output dtype, and float32 dequantized values.
func (mg *merger) buffers(n, osz int, quantized bool) ([]float64, []byte, []float32) {
	before := int64(8*cap(mg.acc) + cap(mg.obuf) + 4*cap(mg.qbuf))
	if cap(mg.acc) < n {
		mg.acc = make([]float64, n)
	}
	if cap(mg.obuf) < n*osz {
		mg.obuf = make([]byte, n*osz)
	}
	if quantized && cap(mg.qbuf) < n {
		mg.qbuf = make([]float32, n)
	}
	mg.alloc(int64(8*cap(mg.acc)+cap(mg.obuf)+4*cap(mg.qbuf)) - before)
	return mg.acc[:n], mg.obuf[:n*osz], mg.qbuf[:min(n, cap(mg.qbuf))]
}

// delta builds the update of one weight by the merge method: low-rank factors for linear, cat
// and svd, a dense (rows, cols) matrix for ties and dare.
func (mg *merger) delta(name string, ts []term, in, out int) ([]*lowRank, []float64) {
	switch mg.opt.Method {
	case Linear:
		lrs := make([]*lowRank, len(ts))
		for i, t := range ts {
			lrs[i] = catTerms([]term{t}, in, out)
			lrs[i].m = t.m
		}
		return lrs, nil
	case Cat:
		return []*lowRank{catTerms(ts, in, out)}, nil
	case SVD:
		t, _ := catTerms(ts, in, out).truncate(mg.rank)
		return []*lowRank{t}, nil
	}
	tasks := make([][]float64, len(ts))
	for i, t := range ts {
		d := catTerms([]term{t}, in, out).dense() // (out, in)
		mg.alloc(int64(8 * len(d)))
		switch mg.opt.Method {
		case TIES:
			trimTopK(d, int(mg.opt.Density*float64(len(d))))
		case DARELinear, DARETIES:
			dropRandom(d, mg.opt.Density, taskSeed(mg.opt.Seed, t.adapter, name))
		}
		tasks[i] = d
	}
	mg.sampleHeap()
	sum := make([]float64, in*out) // (out, in)
	switch mg.opt.Method {
	case DARELinear:
		for _, d := range tasks {
			for e, v := range d {
				sum[e] += v
			}
		}
	default: // ties, dare_ties
		electAndMerge(tasks, sum)
	}
	for _, d := range tasks {
		mg.free(int64(8 * len(d)))
	}
	return nil, sum
}

// decodeInto widens little-endian float elements of dt into dst.
func decodeInto(dst []float64, dt safetensors.DType, src []byte) error {
	switch dt {
	case safetensors.F32:
		for i := range dst {
			dst[i] = float64(math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:])))
		}
	case safetensors.BF16:
		for i := range dst {
			dst[i] = float64(safetensors.BF16ToFloat32(binary.LittleEndian.Uint16(src[2*i:])))
		}
	case safetensors.F16:
		for i := range dst {
			dst[i] = float64(safetensors.F16ToFloat32(binary.LittleEndian.Uint16(src[2*i:])))
		}
	case safetensors.F64:
		for i := range dst {
			dst[i] = math.Float64frombits(binary.LittleEndian.Uint64(src[8*i:]))
		}
	default:
		v, err := safetensors.DecodeFloat32(dt, src)
		if err != nil {
			return err
		}
		for i, x := range v {
			dst[i] = float64(x)
		}
	}
	return nil
}
