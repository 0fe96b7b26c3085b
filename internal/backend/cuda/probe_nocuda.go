//go:build !cuda

package cuda

// Probe reports that this binary has no CUDA support.
func Probe() Report { return Report{Devices: []Device{}, Err: ErrNotBuilt.Error()} }
