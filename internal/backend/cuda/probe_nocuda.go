//go:build !cuda

package cuda

import "github.com/loractl/loractl/internal/backend"

// Probe reports that this binary has no CUDA support.
func Probe() Report { return Report{Devices: []Device{}, Err: ErrNotBuilt.Error()} }

// OpenBackend reports that this binary has no CUDA support.
func OpenBackend(ordinal int) (backend.Backend, error) { return nil, ErrNotBuilt }
