package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"

	"github.com/loractl/loractl/internal/backend"
	"github.com/loractl/loractl/internal/backend/cpu/gemm"
	"github.com/loractl/loractl/internal/backend/cpu/vec"
	"github.com/loractl/loractl/internal/config"
	"github.com/loractl/loractl/internal/device"
	"github.com/spf13/cobra"
)

// resolved returns a command's RunE: it resolves the options (flags over the environment over
// the --config file, see config.Resolve) into a T and calls run with them.
func resolved[T any](s *streams, cfgFile *string, run func(*streams, *T) error) func(*cobra.Command, []string) error {
	return func(c *cobra.Command, _ []string) error {
		var o T
		if err := config.Resolve(c.Flags(), *cfgFile, &o); err != nil {
			return err
		}
		return run(s, &o)
	}
}

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

// openBackend returns the compute backend for a --device value (see device.Open); a malformed
// value is a usage error.
func openBackend(spec string, log io.Writer) (backend.Backend, error) {
	be, err := device.Open(spec, log)
	if errors.Is(err, device.ErrBadSpec) {
		return nil, usageError{fmt.Errorf("--device: %w", err)}
	}
	if err != nil {
		return nil, fmt.Errorf("--%w", err)
	}
	return be, nil
}

// cpuDescription names the CPU kernels this binary runs, e.g. "4 threads, GEMM avx2, vectors avx2".
func cpuDescription() string {
	return fmt.Sprintf("%d threads, GEMM kernels %s, vector kernels %s", runtime.GOMAXPROCS(0), gemm.Impl(), vec.Impl())
}
