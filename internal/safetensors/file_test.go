package safetensors

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loractl/loractl/internal/refdata"
)

func storiesPath(t testing.TB) string {
	return filepath.Join(refdata.Dir(t), "models", "stories260K", "model.safetensors")
}

// readF32 decodes little-endian float32s by hand, independently of the package.
func readF32(b []byte) []float32 {
	out := make([]float32, len(b)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return out
}

func TestStories260KHeader(t *testing.T) {
	path := storiesPath(t)
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	// Independent parse of the header with encoding/json.
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := binary.LittleEndian.Uint64(raw)
	var hdr map[string]json.RawMessage
	if err := json.Unmarshal(raw[8:8+n], &hdr); err != nil {
		t.Fatal(err)
	}
	if got := len(f.Tensors()); got != 47 || got != len(hdr)-1 {
		t.Fatalf("got %d tensors, want 47 (reference JSON has %d)", got, len(hdr)-1)
	}
	if md := f.Metadata(); len(md) != 1 || md["format"] != "pt" {
		t.Errorf("metadata = %v, want {format: pt}", md)
	}
	if f.Header().DataOffset != int64(8+n) {
		t.Errorf("DataOffset = %d, want %d", f.Header().DataOffset, 8+n)
	}
	for name, js := range hdr {
		if name == "__metadata__" {
			continue
		}
		var e struct {
			DType   string  `json:"dtype"`
			Shape   []int   `json:"shape"`
			Offsets []int64 `json:"data_offsets"`
		}
		if err := json.Unmarshal(js, &e); err != nil {
			t.Fatal(err)
		}
		info, ok := f.Info(name)
		if !ok {
			t.Fatalf("tensor %q missing", name)
		}
		if string(info.DType) != e.DType || fmt.Sprint(info.Shape) != fmt.Sprint(e.Shape) || info.Begin != e.Offsets[0] || info.End != e.Offsets[1] {
			t.Errorf("%s: got %+v, reference %+v", name, info, e)
		}
		if info.NumBytes() != info.End-info.Begin {
			t.Errorf("%s: NumBytes %d != %d", name, info.NumBytes(), info.End-info.Begin)
		}
	}
	for i := 1; i < len(f.Tensors()); i++ {
		if f.Tensors()[i].Begin < f.Tensors()[i-1].End {
			t.Fatalf("Tensors() not sorted by offset at %d", i)
		}
	}
	// Shapes from config.json: vocab 512, hidden 64, intermediate 172, 5 layers, 4 kv heads × 8.
	for name, want := range map[string]string{
		"model.embed_tokens.weight":              "[512 64]",
		"model.norm.weight":                      "[64]",
		"model.layers.4.mlp.gate_proj.weight":    "[172 64]",
		"model.layers.0.mlp.down_proj.weight":    "[64 172]",
		"model.layers.2.self_attn.k_proj.weight": "[32 64]",
	} {
		info, ok := f.Info(name)
		if !ok || fmt.Sprint(info.Shape) != want || info.DType != F32 {
			t.Errorf("%s: got %+v (found %v), want F32 %s", name, info, ok, want)
		}
	}
}

// TestStories260KValues compares tensors with the original llama2.c checkpoint the
// safetensors file was converted from (legacy v0 layout, read here with encoding/binary).
func TestStories260KValues(t *testing.T) {
	f, err := Open(storiesPath(t))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	bin, err := os.ReadFile(filepath.Join(refdata.Dir(t), "models", "stories260K", "llama2c", "stories260K.bin"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg [7]int32 // dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
	if err := binary.Read(bytes.NewReader(bin), binary.LittleEndian, &cfg); err != nil {
		t.Fatal(err)
	}
	dim, hidden, layers, heads, kvHeads, vocab := int(cfg[0]), int(cfg[1]), int(cfg[2]), int(cfg[3]), int(cfg[4]), int(cfg[5])
	if vocab < 0 {
		vocab = -vocab
	}
	kvDim := dim / heads * kvHeads
	w := readF32(bin[28:])
	take := func(n int) []float32 { s := w[:n]; w = w[n:]; return s }
	emb := take(vocab * dim)
	rmsAtt := take(layers * dim)
	take(layers * dim * dim)   // wq (permuted by the HF conversion)
	take(layers * dim * kvDim) // wk (permuted)
	wv := take(layers * kvDim * dim)
	take(layers * dim * dim) // wo
	rmsFFN := take(layers * dim)
	w1 := take(layers * hidden * dim)
	w2 := take(layers * dim * hidden)
	w3 := take(layers * hidden * dim)
	rmsFinal := take(dim)

	type namedValues struct {
		name string
		want []float32
	}
	cases := []namedValues{
		{"model.embed_tokens.weight", emb},
		{"model.norm.weight", rmsFinal},
	}
	for l := 0; l < layers; l++ {
		p := fmt.Sprintf("model.layers.%d.", l)
		cases = append(cases,
			namedValues{p + "input_layernorm.weight", rmsAtt[l*dim : (l+1)*dim]},
			namedValues{p + "post_attention_layernorm.weight", rmsFFN[l*dim : (l+1)*dim]},
			namedValues{p + "self_attn.v_proj.weight", wv[l*kvDim*dim : (l+1)*kvDim*dim]},
			namedValues{p + "mlp.gate_proj.weight", w1[l*hidden*dim : (l+1)*hidden*dim]},
			namedValues{p + "mlp.down_proj.weight", w2[l*dim*hidden : (l+1)*dim*hidden]},
			namedValues{p + "mlp.up_proj.weight", w3[l*hidden*dim : (l+1)*hidden*dim]},
		)
	}
	checked := 0
	for _, c := range cases {
		got, err := f.Float32(c.name)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := f.Bytes(c.name)
		if len(got) != len(c.want) {
			t.Fatalf("%s: %d values, want %d", c.name, len(got), len(c.want))
		}
		hand := readF32(raw)
		for i := range got {
			if math.Float32bits(got[i]) != math.Float32bits(c.want[i]) || got[i] != hand[i] {
				t.Fatalf("%s[%d] = %v, llama2.c has %v, raw bytes give %v", c.name, i, got[i], c.want[i], hand[i])
			}
		}
		checked += len(got)
	}
	t.Logf("%d tensors, %d values bit-identical to llama2c/stories260K.bin", len(cases), checked)
}

func TestStories260KRewrite(t *testing.T) {
	path := storiesPath(t)
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var ts []Tensor
	for _, info := range f.Tensors() {
		b, err := f.Bytes(info.Name)
		if err != nil {
			t.Fatal(err)
		}
		ts = append(ts, Tensor{Name: info.Name, DType: info.DType, Shape: info.Shape, Data: b})
	}
	out := filepath.Join(t.TempDir(), "copy.safetensors")
	if err := Write(out, ts, f.Metadata()); err != nil {
		t.Fatal(err)
	}
	g, err := Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if len(g.Tensors()) != len(f.Tensors()) || g.Metadata()["format"] != "pt" || len(g.Metadata()) != 1 {
		t.Fatalf("rewrite has %d tensors, metadata %v", len(g.Tensors()), g.Metadata())
	}
	for _, info := range f.Tensors() {
		a, _ := f.Bytes(info.Name)
		b, err := g.Bytes(info.Name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("%s: bytes differ after rewrite", info.Name)
		}
		gi, _ := g.Info(info.Name)
		if fmt.Sprint(gi.Shape) != fmt.Sprint(info.Shape) || gi.DType != info.DType {
			t.Errorf("%s: info %+v, want %+v", info.Name, gi, info)
		}
	}
	// Same layout rule as the Python library (dtype size, then name) and the same
	// header encoding: the whole file comes out byte-identical.
	orig, _ := os.ReadFile(path)
	copied, _ := os.ReadFile(out)
	if !bytes.Equal(orig, copied) {
		t.Errorf("rewritten file differs from the Python-written one (%d vs %d bytes)", len(copied), len(orig))
	}
	if st, err := os.Stat(out); err != nil || st.Mode().Perm() != 0o644 {
		t.Errorf("output mode: %v %v", st, err)
	}
	ents, _ := os.ReadDir(filepath.Dir(out))
	if len(ents) != 1 {
		t.Errorf("temp files left behind: %v", ents)
	}
}

func TestNotFound(t *testing.T) {
	f, err := Open(storiesPath(t))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, err = f.Bytes("model.layers.0.mlp.gate_proj.weigth")
	if err == nil || !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), `not in`) || !strings.Contains(err.Error(), "model.safetensors") {
		t.Fatalf("error %v", err)
	}
	_, err = f.Float32("model.layers.9.input_layernorm.weight")
	if err == nil || !strings.Contains(err.Error(), `"model.layers.0.input_layernorm.weight"`) {
		t.Fatalf("error should suggest similar names: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Bytes("model.norm.weight"); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("Bytes after Close: %v", err)
	}
}
