package cli

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/loractl/loractl/internal/backend"
	"github.com/loractl/loractl/internal/backend/cpu"
	"github.com/loractl/loractl/internal/backend/cpu/gemm"
	"github.com/loractl/loractl/internal/backend/cpu/vec"
	"github.com/loractl/loractl/internal/backend/cuda"
)

// TestdataEnv names the environment variable that points at the shared reference folder.
const TestdataEnv = "LORACTL_TESTDATA"

// resolveModelDir returns dir, or the built-in default model when dir is empty.
func resolveModelDir(dir string) (string, error) {
	if dir == "" {
		root := os.Getenv(TestdataEnv)
		if root == "" {
			return "", usageError{fmt.Errorf("no --model given: pass --model DIR (a HuggingFace model folder), or set %s to the reference folder to use its stories260K default", TestdataEnv)}
		}
		dir = filepath.Join(root, "models", "stories260K")
	}
	st, err := os.Stat(dir)
	if err != nil {
		return "", fmt.Errorf("model %s: no such file or directory; pass --model with a HuggingFace model folder", dir)
	}
	if !st.IsDir() {
		return "", fmt.Errorf("model %s: not a directory; pass the folder that holds config.json and the .safetensors files", dir)
	}
	return dir, nil
}

// openBackend returns the compute backend for a --device value: cpu; cuda or cuda:N (the CUDA
// backend, inference ops only so far; an error saying why when that GPU cannot be used); auto
// (the CPU for now, noting on log what a CUDA build found).
func openBackend(device string, log io.Writer) (backend.Backend, error) {
	switch {
	case device == "cpu":
		return cpu.New(), nil
	case device == "" || device == "auto":
		r := cuda.Probe()
		if r.Built && !r.Usable() {
			fmt.Fprintf(log, "loractl: no usable GPU (%s); running on the CPU\n", r.Err)
		} else if r.Usable() {
			fmt.Fprintf(log, "loractl: found %s (cuda:0); --device auto stays on the CPU until the CUDA backend is complete (issue #5): --device cuda:0 runs inference on the GPU\n", r.Devices[0].Name)
		}
		return cpu.New(), nil
	case device == "cuda" || strings.HasPrefix(device, "cuda:"):
		idx := 0
		if rest, ok := strings.CutPrefix(device, "cuda:"); ok {
			n, err := strconv.Atoi(rest)
			if err != nil || n < 0 {
				return nil, usageError{fmt.Errorf("--device %q: want cuda:N with N a device index (see loractl inspect --devices)", device)}
			}
			idx = n
		}
		r := cuda.Probe()
		switch {
		case !r.Built || r.Err != "" && len(r.Devices) == 0:
			return nil, fmt.Errorf("--device %s: %s", device, r.Err)
		case idx >= len(r.Devices):
			return nil, fmt.Errorf("--device %s: there are %d CUDA devices (cuda:0 to cuda:%d); see loractl inspect --devices", device, len(r.Devices), len(r.Devices)-1)
		case r.Err != "":
			return nil, fmt.Errorf("--device %s: %s", device, r.Err)
		}
		be, err := cuda.OpenBackend(idx)
		if err != nil {
			return nil, fmt.Errorf("--device %s (%s): %w", device, r.Devices[idx].Name, err)
		}
		return be, nil
	default:
		return nil, usageError{fmt.Errorf("--device %q: want auto, cpu, cuda or cuda:N", device)}
	}
}

// cpuDescription names the CPU kernels this binary runs, e.g. "4 threads, GEMM avx2, vectors avx2".
func cpuDescription() string {
	return fmt.Sprintf("%d threads, GEMM kernels %s, vector kernels %s", runtime.GOMAXPROCS(0), gemm.Impl(), vec.Impl())
}
