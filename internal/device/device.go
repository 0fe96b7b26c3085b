// Package device turns a --device / train.device value into a compute backend: cpu, cuda or
// cuda:N (the CUDA backend of a -tags cuda build), or auto.
package device

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/loractl/loractl/internal/backend"
	"github.com/loractl/loractl/internal/backend/cpu"
	"github.com/loractl/loractl/internal/backend/cuda"
)

// ErrBadSpec marks a device value that is not auto, cpu, cuda or cuda:N.
var ErrBadSpec = errors.New("bad device")

// Valid reports whether spec is auto, cpu, cuda or cuda:N.
func Valid(spec string) bool {
	_, _, err := parse(spec)
	return err == nil
}

// parse returns the kind ("auto", "cpu", "cuda") and the CUDA ordinal.
func parse(spec string) (kind string, ordinal int, err error) {
	switch {
	case spec == "" || spec == "auto":
		return "auto", 0, nil
	case spec == "cpu":
		return "cpu", 0, nil
	case spec == "cuda":
		return "cuda", 0, nil
	case strings.HasPrefix(spec, "cuda:"):
		n, err := strconv.Atoi(strings.TrimPrefix(spec, "cuda:"))
		if err != nil || n < 0 {
			return "", 0, fmt.Errorf("%w %q: want cuda:N with N a device index (see loractl inspect --devices)", ErrBadSpec, spec)
		}
		return "cuda", n, nil
	}
	return "", 0, fmt.Errorf("%w %q: want auto, cpu, cuda or cuda:N", ErrBadSpec, spec)
}

// Open returns the backend for spec. cpu is the CPU backend; cuda and cuda:N the CUDA backend
// (an error saying why when that GPU cannot be used); auto is the CPU for now, noting on log
// what a CUDA build found (the GPU is used when asked for by name until the GPU check has run
// on hardware).
func Open(spec string, log io.Writer) (backend.Backend, error) {
	kind, idx, err := parse(spec)
	if err != nil {
		return nil, err
	}
	switch kind {
	case "cpu":
		return cpu.New(), nil
	case "auto":
		r := cuda.Probe()
		if r.Built && !r.Usable() {
			fmt.Fprintf(log, "loractl: no usable GPU (%s); running on the CPU\n", r.Err)
		} else if r.Usable() {
			fmt.Fprintf(log, "loractl: found %s (cuda:0); auto stays on the CPU until the CUDA backend is complete (issue #5): ask for cuda:0 to run on the GPU\n", r.Devices[0].Name)
		}
		return cpu.New(), nil
	}
	r := cuda.Probe()
	switch {
	case !r.Built || r.Err != "" && len(r.Devices) == 0:
		return nil, fmt.Errorf("device %s: %s", spec, r.Err)
	case idx >= len(r.Devices):
		return nil, fmt.Errorf("device %s: there are %d CUDA devices (cuda:0 to cuda:%d); see loractl inspect --devices", spec, len(r.Devices), len(r.Devices)-1)
	case r.Err != "":
		return nil, fmt.Errorf("device %s: %s", spec, r.Err)
	}
	be, err := cuda.OpenBackend(idx)
	if err != nil {
		return nil, fmt.Errorf("device %s (%s): %w", spec, r.Devices[idx].Name, err)
	}
	return be, nil
}
