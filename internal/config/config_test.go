package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

type opts struct {
	Model       string  `mapstructure:"model"`
	Temperature float64 `mapstructure:"temperature"`
	N           int     `mapstructure:"n"`
	Prompt      string  `mapstructure:"prompt"`
}

func newFlags() *pflag.FlagSet {
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	fs.String("model", "default-model", "")
	fs.Float64("temperature", 0.5, "")
	fs.Int("n", 64, "")
	fs.String("prompt", "", "")
	fs.Bool("not-an-option", false, "")
	return fs
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "cfg.yaml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPrecedence(t *testing.T) {
	file := writeFile(t, "model: from-file\ntemperature: 0.9\nn: 10\n")
	t.Setenv("LORACTL_TEMPERATURE", "0.7")
	fs := newFlags()
	if err := fs.Parse([]string{"--n", "3"}); err != nil {
		t.Fatal(err)
	}
	var o opts
	if err := Resolve(fs, file, &o); err != nil {
		t.Fatal(err)
	}
	// flag > env > file > default
	if o.N != 3 || o.Temperature != 0.7 || o.Model != "from-file" || o.Prompt != "" {
		t.Fatalf("got %+v, want n=3 (flag), temperature=0.7 (env), model=from-file (file), prompt empty (default)", o)
	}
}

func TestDefaultsWithoutFile(t *testing.T) {
	var o opts
	if err := Resolve(newFlags(), "", &o); err != nil {
		t.Fatal(err)
	}
	if o.Model != "default-model" || o.Temperature != 0.5 || o.N != 64 {
		t.Fatalf("defaults not applied: %+v", o)
	}
}

func TestUnknownKey(t *testing.T) {
	file := writeFile(t, "model: m\ntemprature: 0.9\n")
	var o opts
	err := Resolve(newFlags(), file, &o)
	if err == nil || !strings.Contains(err.Error(), "temprature") || !strings.Contains(err.Error(), file) {
		t.Fatalf("want an error naming the file and the unknown key, got %v", err)
	}
}

func TestBadYAMLAndMissingFile(t *testing.T) {
	var o opts
	bad := writeFile(t, "model: [unclosed\n")
	if err := Resolve(newFlags(), bad, &o); err == nil || !strings.Contains(err.Error(), bad) {
		t.Fatalf("bad YAML: got %v", err)
	}
	missing := filepath.Join(t.TempDir(), "nope.yaml")
	if err := Resolve(newFlags(), missing, &o); err == nil || !strings.Contains(err.Error(), missing) {
		t.Fatalf("missing file: got %v", err)
	}
}

func TestWrongType(t *testing.T) {
	file := writeFile(t, "n: many\n")
	var o opts
	if err := Resolve(newFlags(), file, &o); err == nil || !strings.Contains(err.Error(), file) {
		t.Fatalf("want a decode error naming the file, got %v", err)
	}
}

func TestExpandEnvInFileValues(t *testing.T) {
	t.Setenv("LORACTL_TESTDATA_X", "/data/ref")
	file := writeFile(t, "model: ${LORACTL_TESTDATA_X}/models/m\nprompt: costs $5 ${LORACTL_TESTDATA_X}\n")
	var o opts
	if err := Resolve(newFlags(), file, &o); err != nil {
		t.Fatal(err)
	}
	if o.Model != "/data/ref/models/m" {
		t.Fatalf("model = %q, want expanded path", o.Model)
	}
	if o.Prompt != "costs $5 /data/ref" {
		t.Fatalf("prompt = %q: a bare $ must survive", o.Prompt)
	}
	// A value given on the command line is taken literally.
	fs := newFlags()
	if err := fs.Parse([]string{"--model", "${LORACTL_TESTDATA_X}"}); err != nil {
		t.Fatal(err)
	}
	if err := Resolve(fs, file, &o); err != nil {
		t.Fatal(err)
	}
	if o.Model != "${LORACTL_TESTDATA_X}" {
		t.Fatalf("flag value was expanded: %q", o.Model)
	}
}
