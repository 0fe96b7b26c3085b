package device

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/loractl/loractl/internal/backend/cuda"
)

func TestValid(t *testing.T) {
	for spec, want := range map[string]bool{"": true, "auto": true, "cpu": true, "cuda": true, "cuda:0": true, "cuda:12": true,
		"gpu": false, "cuda:": false, "cuda:x": false, "cuda:-1": false, "CPU": false} {
		if got := Valid(spec); got != want {
			t.Errorf("Valid(%q) = %v, want %v", spec, got, want)
		}
	}
}

// TestOpen: cpu and auto give the CPU backend (auto quietly in a build without CUDA); a bad
// value is ErrBadSpec; cuda without a usable GPU says why.
func TestOpen(t *testing.T) {
	var log bytes.Buffer
	for _, spec := range []string{"cpu", "auto", ""} {
		be, err := Open(spec, &log)
		if err != nil || be.Name() != "cpu" {
			t.Fatalf("Open(%q) = %v, %v; want the CPU backend", spec, be, err)
		}
	}
	r := cuda.Probe()
	if !r.Built && log.Len() != 0 {
		t.Errorf("auto in a build without CUDA logged %q", log.String())
	}
	if _, err := Open("gpu", &log); !errors.Is(err, ErrBadSpec) {
		t.Errorf("Open(gpu): %v, want ErrBadSpec", err)
	}
	if r.Usable() {
		return
	}
	_, err := Open("cuda:0", &log)
	if err == nil || !strings.Contains(err.Error(), "device cuda:0") || !strings.Contains(err.Error(), r.Err) {
		t.Errorf("Open(cuda:0) without a GPU: %v (probe: %s)", err, r.Err)
	}
}
