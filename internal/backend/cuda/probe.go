// Package cuda is the CUDA backend (issue #5), built with `-tags cuda`. It reaches the GPU only
// through a small cgo shim that dlopens the driver (libcuda.so.1) and cuBLAS
// ($LORACTL_CUBLAS, then libcublas.so.13, .12, .11) with its own prototypes, so the binary links
// nothing but libc and runs, or falls back to the CPU with a reason, on any machine.
//
// This first slice finds the driver, cuBLAS and the devices (Probe, `loractl inspect
// --devices`); the kernels and the backend's ops come next.
package cuda

import (
	"errors"
	"fmt"
	"strings"
)

// Device is one GPU as the driver reports it.
type Device struct {
	Index        int    `json:"index"`
	Name         string `json:"name"`
	MemoryBytes  uint64 `json:"memory_bytes"`
	ComputeMajor int    `json:"compute_major"`
	ComputeMinor int    `json:"compute_minor"`
}

// Report is what Probe found.
type Report struct {
	Built         bool     `json:"built"`          // the binary has the CUDA shim (-tags cuda)
	LibCUDA       string   `json:"libcuda"`        // the driver library loaded, "" if none
	DriverVersion int      `json:"driver_version"` // e.g. 12040 for CUDA 12.4, 0 if unknown
	LibCUBLAS     string   `json:"libcublas"`      // the cuBLAS library loaded, "" if none
	Devices       []Device `json:"devices"`
	Err           string   `json:"error,omitempty"` // why there is no usable device, "" if there is one
}

// ErrNotBuilt is the reason Probe gives in a binary built without `-tags cuda`.
var ErrNotBuilt = errors.New("this loractl was built without CUDA support (rebuild with `go build -tags cuda ./cmd/loractl`)")

// Usable reports whether a GPU is present and the libraries it needs were found.
func (r Report) Usable() bool { return r.Err == "" && len(r.Devices) > 0 }

// String renders the report for people, one fact per line.
func (r Report) String() string {
	var b strings.Builder
	if !r.Built {
		fmt.Fprintf(&b, "cuda: %s\n", ErrNotBuilt)
		return b.String()
	}
	lib := func(s string) string {
		if s == "" {
			return "not found"
		}
		return s
	}
	fmt.Fprintf(&b, "driver:  %s", lib(r.LibCUDA))
	if r.DriverVersion > 0 {
		fmt.Fprintf(&b, " (CUDA %d.%d)", r.DriverVersion/1000, r.DriverVersion%1000/10)
	}
	fmt.Fprintf(&b, "\ncublas:  %s\n", lib(r.LibCUBLAS))
	for _, d := range r.Devices {
		fmt.Fprintf(&b, "cuda:%d   %s, %.1f GiB, compute capability %d.%d\n", d.Index, d.Name,
			float64(d.MemoryBytes)/(1<<30), d.ComputeMajor, d.ComputeMinor)
	}
	if r.Err != "" {
		fmt.Fprintf(&b, "unusable: %s\n", r.Err)
	}
	return b.String()
}
