package quant

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/loractl/loractl/internal/atomicfile"
	"github.com/loractl/loractl/internal/safetensors"
)

// MetadataKey is the safetensors metadata entry of a quantized checkpoint: a JSON Info.
const MetadataKey = "loractl.quantization"

// QuantMethod is the quant_method of the quantization_config that QuantizeFolder writes into
// config.json.
const QuantMethod = "loractl"

// Tensor name suffixes of the parts of a quantized weight <name> (docs/FORMATS.md):
//
//	<name>                U8 codes, shape [bytes]
//	<name>.absmax         F32 [G] (nf4), or U8 [G] double-quantized codes
//	<name>.absmax2        F32 [⌈G/256⌉] (nf4 with double quantization)
//	<name>.absmax_offset  F32 [1]       (nf4 with double quantization)
//	<name>.scale          F32 [G] (int8, int4)
const (
	SuffixAbsmax  = ".absmax"
	SuffixAbsmax2 = ".absmax2"
	SuffixOffset  = ".absmax_offset"
	SuffixScale   = ".scale"
)

// Info describes a quantized checkpoint; it is stored as JSON under MetadataKey.
type Info struct {
	Version     int              `json:"version"`
	Format      Format           `json:"format"`
	GroupSize   int              `json:"group_size"`
	DoubleQuant bool             `json:"double_quant"`
	Shapes      map[string][]int `json:"shapes"` // original shape of every quantized tensor
}

// Options returns the quantization options of the checkpoint.
func (i *Info) Options() Options {
	return Options{Format: i.Format, GroupSize: i.GroupSize, DoubleQuant: i.DoubleQuant}
}

// linearWeight matches the Linear weights of a Llama-family block, the tensors QuantizeFolder
// quantizes (embeddings, lm_head, norms and biases are kept as they are).
var linearWeight = regexp.MustCompile(`^model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)\.weight$`)

// IsLinearWeight reports whether a checkpoint tensor name is a block's Linear weight.
func IsLinearWeight(name string) bool { return linearWeight.MatchString(name) }

// ReadInfo returns the quantization Info of a checkpoint, or nil when it is not quantized.
func ReadInfo(ck *safetensors.Checkpoint) (*Info, error) {
	raw, ok := ck.Metadata()[MetadataKey]
	if !ok {
		return nil, nil
	}
	var info Info
	if err := json.Unmarshal([]byte(raw), &info); err != nil {
		return nil, fmt.Errorf("%s: metadata %s is not valid JSON (%v); re-create the folder with loractl quantize", ck.Path(), MetadataKey, err)
	}
	o := info.Options()
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("%s: metadata %s: %w; re-create the folder with loractl quantize", ck.Path(), MetadataKey, err)
	}
	if info.Version != 1 {
		return nil, fmt.Errorf("%s: quantization format version %d is not known to this loractl (want 1); upgrade loractl or re-quantize", ck.Path(), info.Version)
	}
	return &info, nil
}

// ReadTensor reads the quantized tensor name of a checkpoint described by info, checking the
// sizes of every part.
func ReadTensor(ck *safetensors.Checkpoint, info *Info, name string) (*Tensor, error) {
	shape, ok := info.Shapes[name]
	if !ok {
		return nil, fmt.Errorf("%s: %s is not a quantized tensor of this checkpoint", ck.Path(), name)
	}
	n := 1
	for _, d := range shape {
		n *= d
	}
	t := &Tensor{Format: info.Format, Shape: append([]int(nil), shape...), N: n, GroupSize: info.GroupSize}
	G := t.Groups()
	fix := "the file is corrupt or was not written by loractl quantize; re-create it"
	part := func(suffix string, dt safetensors.DType, count int) ([]byte, error) {
		pn := name + suffix
		pi, ok := ck.Info(pn)
		if !ok {
			return nil, fmt.Errorf("%s: tensor %s is missing; %s", ck.Path(), pn, fix)
		}
		if pi.DType != dt || pi.NumElements() != int64(count) {
			return nil, fmt.Errorf("%s: tensor %s is %s %v, want %s with %d elements; %s", ck.Path(), pn, pi.DType, pi.Shape, dt, count, fix)
		}
		return ck.Bytes(pn)
	}
	f32 := func(suffix string, count int) ([]float32, error) {
		b, err := part(suffix, safetensors.F32, count)
		if err != nil {
			return nil, err
		}
		return safetensors.DecodeFloat32(safetensors.F32, b)
	}
	codes := (n + 1) / 2
	if t.Format == Int8 {
		codes = n
	}
	b, err := part("", safetensors.U8, codes)
	if err != nil {
		return nil, err
	}
	t.Codes = append([]byte(nil), b...)
	switch {
	case t.Format == NF4 && info.DoubleQuant:
		d := &DoubleQuant{}
		if b, err = part(SuffixAbsmax, safetensors.U8, G); err != nil {
			return nil, err
		}
		d.Codes = append([]uint8(nil), b...)
		if d.Scales, err = f32(SuffixAbsmax2, (G+DQBlock-1)/DQBlock); err != nil {
			return nil, err
		}
		off, err := f32(SuffixOffset, 1)
		if err != nil {
			return nil, err
		}
		d.Offset = off[0]
		t.DQ = d
	case t.Format == NF4:
		if t.Scales, err = f32(SuffixAbsmax, G); err != nil {
			return nil, err
		}
	default:
		if t.Scales, err = f32(SuffixScale, G); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// IsPart reports whether a checkpoint tensor name is an auxiliary part (scales) of a quantized
// tensor of info.
func (i *Info) IsPart(name string) bool {
	for _, s := range []string{SuffixAbsmax, SuffixAbsmax2, SuffixOffset, SuffixScale} {
		if base, ok := strings.CutSuffix(name, s); ok {
			if _, q := i.Shapes[base]; q {
				return true
			}
		}
	}
	return false
}

// parts lists the tensors a quantized weight is stored as, with dtypes and element counts, in
// file order (float32 parts first, so that they stay 4-byte aligned).
func parts(name string, n int, o Options) []safetensors.TensorInfo {
	G := (n + o.GroupSize - 1) / o.GroupSize
	codes := (n + 1) / 2
	if o.Format == Int8 {
		codes = n
	}
	p := func(suffix string, dt safetensors.DType, count int) safetensors.TensorInfo {
		return safetensors.TensorInfo{Name: name + suffix, DType: dt, Shape: []int{count}}
	}
	switch {
	case o.Format == NF4 && o.DoubleQuant:
		return []safetensors.TensorInfo{p(SuffixAbsmax2, safetensors.F32, (G+DQBlock-1)/DQBlock), p(SuffixOffset, safetensors.F32, 1),
			p(SuffixAbsmax, safetensors.U8, G), p("", safetensors.U8, codes)}
	case o.Format == NF4:
		return []safetensors.TensorInfo{p(SuffixAbsmax, safetensors.F32, G), p("", safetensors.U8, codes)}
	}
	return []safetensors.TensorInfo{p(SuffixScale, safetensors.F32, G), p("", safetensors.U8, codes)}
}

// partBytes returns the bytes of each part of t, in the order of parts.
func partBytes(t *Tensor) [][]byte {
	enc := func(v []float32) []byte {
		b, _ := safetensors.EncodeFloat32(safetensors.F32, v)
		return b
	}
	switch {
	case t.DQ != nil:
		return [][]byte{enc(t.DQ.Scales), enc([]float32{t.DQ.Offset}), t.DQ.Codes, t.Codes}
	case t.Format == NF4:
		return [][]byte{enc(t.Scales), t.Codes}
	}
	return [][]byte{enc(t.Scales), t.Codes}
}

// FolderReport says what QuantizeFolder wrote.
type FolderReport struct {
	Out            string
	Quantized      int   // tensors quantized
	Kept           int   // tensors copied as they are
	QuantizedElems int64 // elements of the quantized tensors
	QuantizedBytes int64 // their storage
	SourceBytes    int64 // the source weights' storage
	OutBytes       int64 // the output weights' storage
	PeakTensor     int64 // the largest source tensor converted to float32, in bytes
}

// BitsPerParam is the storage of the quantized tensors in bits per element.
func (r *FolderReport) BitsPerParam() float64 {
	return 8 * float64(r.QuantizedBytes) / float64(max(r.QuantizedElems, 1))
}

// QuantizeFolder writes a quantized copy of the HF model folder src to out: config.json with a
// quantization_config, model.safetensors with every block Linear weight quantized as o says
// (the other tensors as they are) and the quantization Info in its metadata, and the other
// top-level files of src (tokenizer, generation config, ...) copied. Tensors are read,
// quantized and written one at a time. out must not exist unless overwrite is set. Every file
// is written to a temporary file and renamed into place; on error nothing half-written stays.
func QuantizeFolder(src, out string, o Options, overwrite bool) (*FolderReport, error) {
	return QuantizeFolderWith(src, out, o, overwrite, nil)
}

// QuantizeFolderWith is QuantizeFolder with fn quantizing each Linear weight (nil:
// Quantize); fn must return a tensor in format o of the given shape. Training with LoftQ saves
// the base its adapter belongs to this way.
func QuantizeFolderWith(src, out string, o Options, overwrite bool, fn func(name string, w []float32, shape []int) (*Tensor, error)) (*FolderReport, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if err := prepareOut(src, out, overwrite); err != nil {
		return nil, err
	}
	cfgRaw, err := os.ReadFile(filepath.Join(src, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("%s: no readable config.json (%v); point --model at a HuggingFace model folder", src, err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(cfgRaw, &cfg); err != nil {
		return nil, fmt.Errorf("%s: config.json is not valid JSON: %v", filepath.Join(src, "config.json"), err)
	}
	if _, ok := cfg["quantization_config"]; ok {
		return nil, fmt.Errorf("%s: the model is already quantized (config.json has a quantization_config); quantize the original float checkpoint", src)
	}
	ck, err := safetensors.OpenCheckpoint(src)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", src, err)
	}
	defer ck.Close()

	// Plan the file: every part's size is known from the shapes, so the header comes first and
	// the tensors follow as they are produced.
	rep := &FolderReport{Out: out}
	info := Info{Version: 1, Format: o.Format, GroupSize: o.GroupSize, DoubleQuant: o.DoubleQuant, Shapes: map[string][]int{}}
	var quantNames, keepNames []string
	for _, name := range ck.Names() {
		ti, _ := ck.Info(name)
		rep.SourceBytes += ti.NumBytes()
		if IsLinearWeight(name) && ti.DType.IsFloat() && len(ti.Shape) == 2 {
			quantNames = append(quantNames, name)
			info.Shapes[name] = append([]int(nil), ti.Shape...)
		} else {
			keepNames = append(keepNames, name)
		}
	}
	if len(quantNames) == 0 {
		return nil, fmt.Errorf("%s: no Linear weights (model.layers.N.self_attn.q_proj.weight, ...) to quantize; is this a Llama-family checkpoint?", src)
	}
	// Kept tensors by element size (largest first, aligned), then the quantized ones.
	sort.SliceStable(keepNames, func(a, b int) bool {
		ia, _ := ck.Info(keepNames[a])
		ib, _ := ck.Info(keepNames[b])
		return ia.DType.Size() > ib.DType.Size()
	})
	var layout []safetensors.TensorInfo
	var pos int64
	add := func(t safetensors.TensorInfo, bytes int64) {
		t.Begin, t.End = pos, pos+bytes
		pos += bytes
		layout = append(layout, t)
	}
	for _, name := range keepNames {
		ti, _ := ck.Info(name)
		add(safetensors.TensorInfo{Name: name, DType: ti.DType, Shape: ti.Shape}, ti.NumBytes())
	}
	for _, name := range quantNames {
		ti, _ := ck.Info(name)
		for _, p := range parts(name, int(ti.NumElements()), o) {
			add(p, int64(p.Shape[0]*p.DType.Size()))
		}
	}
	infoJSON, _ := json.Marshal(info)
	header := safetensors.EncodeHeader(layout, map[string]string{"format": "pt", MetadataKey: string(infoJSON)})
	if len(header)-8 > safetensors.MaxHeaderSize {
		return nil, fmt.Errorf("%s: the quantized header would be %d bytes, over the safetensors limit", out, len(header)-8)
	}

	weights := filepath.Join(out, safetensors.SingleFile)
	err = writeStreaming(weights, header, func(w io.Writer) error {
		for _, name := range keepNames {
			b, err := ck.Bytes(name)
			if err != nil {
				return err
			}
			if _, err := w.Write(b); err != nil {
				return err
			}
			rep.Kept++
			rep.OutBytes += int64(len(b))
		}
		for _, name := range quantNames {
			x, err := ck.Float32(name) // (rows, cols)
			if err != nil {
				return err
			}
			rep.PeakTensor = max(rep.PeakTensor, 4*int64(len(x)))
			var t *Tensor
			if fn != nil {
				t, err = fn(name, x, info.Shapes[name])
			} else {
				t, err = Quantize(name, x, info.Shapes[name], o)
			}
			if err != nil {
				return fmt.Errorf("%s: %w", src, err)
			}
			if t.Format != o.Format || t.GroupSize != o.GroupSize || (t.DQ != nil) != o.DoubleQuant || t.N != len(x) {
				return fmt.Errorf("%s: the quantizer returned %s (group %d) for %s, want %s (group %d)", src, t.Format, t.GroupSize, name, o.Format, o.GroupSize)
			}
			for _, b := range partBytes(t) {
				if _, err := w.Write(b); err != nil {
					return err
				}
			}
			rep.Quantized++
			rep.QuantizedElems += int64(t.N)
			rep.QuantizedBytes += t.Bytes()
			rep.OutBytes += t.Bytes()
		}
		return nil
	})
	if err != nil {
		return nil, err
	}

	cfg["quantization_config"] = map[string]any{
		"quant_method": QuantMethod, "format": string(o.Format), "group_size": o.GroupSize,
		"double_quant": o.DoubleQuant, "modules": []string{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
		"scale_dtype": "float32", "version": 1,
	}
	js, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := atomicfile.Write(filepath.Join(out, "config.json"), append(js, '\n')); err != nil {
		return nil, err
	}
	if err := copyAux(src, out); err != nil {
		return nil, err
	}
	return rep, nil
}

// prepareOut checks that out may be written and creates it.
func prepareOut(src, out string, overwrite bool) error {
	if out == "" {
		return errors.New("quantize: --out is empty; name the output folder")
	}
	as, _ := filepath.Abs(src)
	ao, _ := filepath.Abs(out)
	if as == ao {
		return fmt.Errorf("quantize: --out %s is the source folder; choose another folder", out)
	}
	st, err := os.Stat(out)
	switch {
	case err == nil && !st.IsDir():
		return fmt.Errorf("quantize: --out %s exists and is not a folder; choose a folder path", out)
	case err == nil && !overwrite:
		return fmt.Errorf("quantize: %s already exists; pass --overwrite to replace its files, or choose another --out", out)
	case err == nil:
		// Files that would shadow or contradict the new single-file checkpoint.
		stale, _ := filepath.Glob(filepath.Join(out, "*.safetensors"))
		stale = append(stale, filepath.Join(out, safetensors.IndexFile))
		for _, f := range stale {
			if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("quantize: remove the old %s: %w", f, err)
			}
		}
	case !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("quantize: --out %s: %w", out, err)
	}
	return os.MkdirAll(out, 0o755)
}

// copyAux copies the top-level files of src other than weights and config.json (tokenizer,
// tokenizer_config, generation_config, special tokens, chat template, licences) into out.
func copyAux(src, out string) error {
	ents, err := os.ReadDir(src)
	if err != nil {
		return fmt.Errorf("read %s: %w", src, err)
	}
	for _, e := range ents {
		name := e.Name()
		if !e.Type().IsRegular() || name == "config.json" || strings.HasPrefix(name, ".") {
			continue
		}
		switch strings.ToLower(filepath.Ext(name)) {
		case ".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack":
			continue
		}
		if name == safetensors.IndexFile || strings.HasSuffix(name, ".safetensors.index.json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, name))
		if err != nil {
			return fmt.Errorf("copy %s: %w", filepath.Join(src, name), err)
		}
		if err := atomicfile.Write(filepath.Join(out, name), b); err != nil {
			return err
		}
	}
	return nil
}

// writeStreaming writes header and then whatever body writes to path, atomically.
func writeStreaming(path string, header []byte, body func(io.Writer) error) error {
	return atomicfile.WriteFunc(path, func(w io.Writer) error {
		if _, err := w.Write(header); err != nil {
			return err
		}
		return body(w)
	})
}
