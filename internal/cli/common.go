package cli

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/loractl/loractl/internal/backend"
	"github.com/loractl/loractl/internal/backend/cpu"
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

// openBackend returns the compute backend for a --device value.
func openBackend(device string, log io.Writer) (backend.Backend, error) {
	switch device {
	case "", "auto", "cpu":
		return cpu.New(), nil
	default:
		return nil, usageError{fmt.Errorf("--device %q: this build supports only auto and cpu", device)}
	}
}
