package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loractl/loractl/internal/quant"
	"github.com/loractl/loractl/internal/safetensors"
)

// TestQuantizeCommand quantizes stories260K in each format, checks the folder (metadata,
// config.json's quantization_config, copied tokenizer) and generates from it.
func TestQuantizeCommand(t *testing.T) {
	src := stories(t)
	for _, args := range [][]string{
		{"--format", "nf4"}, {"--format", "nf4", "--double-quant"}, {"--format", "int8", "--group-size", "128"}, {"--format", "int4", "--group-size", "32"},
	} {
		out := filepath.Join(t.TempDir(), "q")
		code, _, errs := run(t, "", append([]string{"quantize", "--model", src, "--out", out}, args...)...)
		if code != 0 {
			t.Fatalf("quantize %v: exit %d: %s", args, code, errs)
		}
		if !strings.Contains(errs, "quantized 35 Linear weights") || !strings.Contains(errs, "bits/param") {
			t.Fatalf("quantize %v: report %q", args, errs)
		}
		ck, err := safetensors.OpenCheckpoint(out)
		if err != nil {
			t.Fatal(err)
		}
		qi, err := quant.ReadInfo(ck)
		ck.Close()
		if err != nil || qi == nil || string(qi.Format) != args[1] || len(qi.Shapes) != 35 {
			t.Fatalf("quantize %v: metadata %+v, %v", args, qi, err)
		}
		for _, f := range []string{"config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json", "tokenizer.model"} {
			if _, err := os.Stat(filepath.Join(out, f)); err != nil {
				t.Fatalf("quantize %v: %s not written: %v", args, f, err)
			}
		}
		code, stdout, errs := run(t, "", "generate", "--model", out, "--prompt", "Once upon a time", "-n", "8")
		if code != 0 || !strings.HasPrefix(stdout, "Once upon a time") {
			t.Fatalf("generate from the %v folder: exit %d, %q, %s", args, code, stdout, errs)
		}
		code, stdout, _ = run(t, "", "inspect", out)
		if code != 0 || !strings.Contains(stdout, "quantization") {
			t.Fatalf("inspect of the %v folder: exit %d:\n%s", args, code, stdout)
		}
	}
}

func TestQuantizeBadInput(t *testing.T) {
	src := stories(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "q")
	if code, _, errs := run(t, "", "quantize", "--model", src, "--out", out); code != 0 {
		t.Fatalf("quantize: %s", errs)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--out", out}, "--overwrite"},
		{[]string{"--out", filepath.Join(dir, "x"), "--format", "nf5"}, "nf4, int8, int4"},
		{[]string{"--out", filepath.Join(dir, "x"), "--format", "int4", "--double-quant"}, "nf4 only"},
		{[]string{"--out", filepath.Join(dir, "x"), "--group-size", "3"}, "group size 3"},
		{[]string{"--out", filepath.Join(dir, "x"), "--format", "gguf-q8_0", "--double-quant"}, "nf4 only"},
		{[]string{}, "--out"},
		{[]string{"--out", filepath.Join(dir, "x.gguf"), "--format", "nf4"}, "gguf-q8_0"},
	} {
		code, _, errs := run(t, "", append([]string{"quantize", "--model", src}, c.args...)...)
		if code == 0 || !strings.Contains(errs, c.want) || strings.Contains(errs, "panic") {
			t.Errorf("quantize %v: exit %d, stderr %q; want an error mentioning %q", c.args, code, errs, c.want)
		}
	}
	if code, _, errs := run(t, "", "quantize", "--model", src, "--out", out, "--format", "int8", "--overwrite"); code != 0 {
		t.Fatalf("--overwrite: %s", errs)
	}
	if code, _, errs := run(t, "", "quantize", "--model", out, "--out", filepath.Join(dir, "again")); code == 0 || !strings.Contains(errs, "already quantized") {
		t.Errorf("quantizing a quantized folder: exit %d, %s", code, errs)
	}
}
