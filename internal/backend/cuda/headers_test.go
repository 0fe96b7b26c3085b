package cuda

import (
	"os"
	"os/exec"
	"testing"
)

// TestShimMatchesHeaders compiles testdata/static_check.c and static_check_cublas.c against
// the installed cuda.h and cublas_v2.h: the shim's hand-written types, constants and
// entry-point signatures must match NVIDIA's. It
// skips where the CUDA headers are not installed.
func TestShimMatchesHeaders(t *testing.T) {
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skip("gcc not found")
	}
	inc := ""
	for _, d := range []string{os.Getenv("CUDA_HOME") + "/include", "/usr/local/cuda/include", "/usr/include"} {
		if _, err := os.Stat(d + "/cuda.h"); err == nil {
			inc = d
			break
		}
	}
	if inc == "" {
		t.Skip("cuda.h not found (install the CUDA toolkit: ../shared/tools/install-nvcc.sh, or set CUDA_HOME)")
	}
	for _, f := range []string{"testdata/static_check.c", "testdata/static_check_cublas.c"} {
		out, err := exec.Command(gcc, "-fsyntax-only", "-std=c11", "-Werror", "-Wincompatible-pointer-types", "-I", inc, f).CombinedOutput()
		if err != nil {
			t.Errorf("%s: the shim's prototypes disagree with the headers in %s: %v\n%s", f, inc, err, out)
		}
	}
}
