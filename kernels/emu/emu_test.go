package emu

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/loractl/loractl/kernels"
)

// The driver: builds the emulator once per test binary (g++ on the .cu files of kernels.Modules,
// cuda_emu.h, runtime.cpp and a registry of every kernel of Modules), then runs launches in it.

// A build is one emulator binary: a set of .cu files and the kernels it registers.
type build struct {
	once sync.Once
	bin  string
	err  error
}

var (
	buildsMu sync.Mutex
	builds   = map[string]*build{}
	buildDir string // removed by TestMain
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// registry is the C++ file that includes the .cu files and registers the kernels.
func registry(cuFiles, entries []string) string {
	var b strings.Builder
	b.WriteString("// Written by kernels/emu/emu_test.go.\n")
	for _, f := range cuFiles {
		fmt.Fprintf(&b, "#include %q\n", f)
	}
	b.WriteString("#include \"launch.h\"\nconst emu::Entry emu::kernels[] = {\n")
	for _, e := range entries {
		fmt.Fprintf(&b, "\tEMU_KERNEL(%s),\n", e)
	}
	b.WriteString("\t{nullptr, nullptr},\n};\n")
	return b.String()
}

// emulator returns the emulator of every kernel of kernels.Modules, building it on first use
// and skipping the test when g++ is missing.
func emulator(t *testing.T) string {
	t.Helper()
	here, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	var cuFiles, entries []string
	for _, m := range kernels.Modules {
		cuFiles = append(cuFiles, filepath.Join(filepath.Dir(here), m.Name+".cu"))
		entries = append(entries, m.Entries...)
	}
	return emulatorOf(t, "kernels", cuFiles, entries)
}

// emulatorOf builds (once per key) the emulator of the given .cu files and kernels.
func emulatorOf(t *testing.T, key string, cuFiles, entries []string) string {
	t.Helper()
	gxx, err := exec.LookPath("g++")
	if err != nil {
		t.Skip("g++ not found: the CUDA kernels are not executed on the CPU (install g++ to run the emulator checks)")
	}
	buildsMu.Lock()
	bd := builds[key]
	if bd == nil {
		bd = &build{}
		builds[key] = bd
	}
	if buildDir == "" {
		if buildDir, err = os.MkdirTemp("", "loractl-emu-"); err != nil {
			buildsMu.Unlock()
			t.Fatal(err)
		}
	}
	dir := filepath.Join(buildDir, key)
	buildsMu.Unlock()
	bd.once.Do(func() {
		here, err := filepath.Abs(".")
		if err != nil {
			bd.err = err
			return
		}
		// Read every source g++ will read, so that go test's cache sees a change to any of them.
		srcs := append([]string(nil), cuFiles...)
		for _, pat := range []string{"../*.cuh", "*.h", "harness/*.cpp"} {
			files, _ := filepath.Glob(filepath.Join(here, pat))
			srcs = append(srcs, files...)
		}
		for _, f := range srcs {
			if _, err := os.ReadFile(f); err != nil {
				bd.err = err
				return
			}
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			bd.err = err
			return
		}
		reg := filepath.Join(dir, "registry.cpp")
		if err := os.WriteFile(reg, []byte(registry(cuFiles, entries)), 0o644); err != nil {
			bd.err = err
			return
		}
		bd.bin = filepath.Join(dir, "emu")
		cmd := exec.Command(gxx, "-std=c++17", "-O1", "-g", "-ffp-contract=off", "-U_FORTIFY_SOURCE", "-Wall", "-Werror",
			"-Wno-unused-function", "-include", filepath.Join(here, "cuda_emu.h"), "-I", here,
			"-o", bd.bin, reg, filepath.Join(here, "harness", "runtime.cpp"))
		if out, err := cmd.CombinedOutput(); err != nil {
			bd.err = fmt.Errorf("g++: %v\n%s", err, out)
		}
	})
	if bd.err != nil {
		t.Fatal(bd.err)
	}
	return bd.bin
}

// arg is one kernel argument.
type arg struct {
	kind  string // "in", "out", "inout", "alias", "null", "i32", "i64", "f32"
	data  []byte // in, inout
	n     int    // out: bytes; alias: the argument index
	i     int64
	f     float32
	elemT string // "f32", "i32", "u16": how results are read back
}

func bytesOf(x any) ([]byte, string) {
	var b bytes.Buffer
	if err := binary.Write(&b, binary.LittleEndian, x); err != nil {
		panic(err)
	}
	switch x.(type) {
	case []float32:
		return b.Bytes(), "f32"
	case []int32:
		return b.Bytes(), "i32"
	case []uint16:
		return b.Bytes(), "u16"
	}
	panic(fmt.Sprintf("bytesOf: %T", x))
}

// in is a read-only input (write-protected in the emulator).
func in(x any) arg { b, e := bytesOf(x); return arg{kind: "in", data: b, elemT: e} }

// inout is a buffer the kernel reads and updates (+= gradients, in place ops).
func inout(x any) arg { b, e := bytesOf(x); return arg{kind: "inout", data: b, elemT: e} }

// out is an output of n float32 elements, poisoned (NaN) before the launch.
func out(n int) arg { return arg{kind: "out", n: 4 * n, elemT: "f32"} }

// outU16 is an output of n 16-bit elements, poisoned (all bits set) before the launch.
func outU16(n int) arg { return arg{kind: "out", n: 2 * n, elemT: "u16"} }

// alias passes argument k's buffer again (an output that may be an input).
func alias(k int) arg { return arg{kind: "alias", n: k} }

func null() arg         { return arg{kind: "null"} }
func i32(v int) arg     { return arg{kind: "i32", i: int64(int32(v))} }
func i64(v int) arg     { return arg{kind: "i64", i: int64(v)} }
func f32(v float32) arg { return arg{kind: "f32", f: v} }
func ints(v []int) []int32 {
	x := make([]int32, len(v))
	for i, id := range v {
		x[i] = int32(id)
	}
	return x
}

// result holds the buffers of one launch after it ran, by argument index.
type result map[int][]byte

func (r result) f32(i int) []float32 {
	b := r[i]
	x := make([]float32, len(b)/4)
	binary.Read(bytes.NewReader(b), binary.LittleEndian, x)
	return x
}

func (r result) u16(i int) []uint16 {
	b := r[i]
	x := make([]uint16, len(b)/2)
	binary.Read(bytes.NewReader(b), binary.LittleEndian, x)
	return x
}

// launched records the kernels each test ran (TestEveryKernelChecked reads it).
var (
	launchedMu sync.Mutex
	launched   = map[string]map[string]bool{} // t.Name() → kernels
)

// launch runs kernel on a grid×block launch, once with blocks and threads in order and once in
// reverse order; the two must agree bitwise (a difference is a race or a read of unwritten
// memory). It returns the buffers of the forward run.
func launch(t *testing.T, kernel string, grid, block int, args ...arg) result {
	t.Helper()
	res, err := runLaunch(t, emulator(t), kernel, grid, block, args...)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// runLaunch is launch in the emulator bin, returning its failure.
func runLaunch(t *testing.T, bin, kernel string, grid, block int, args ...arg) (result, error) {
	t.Helper()
	launchedMu.Lock()
	if launched[t.Name()] == nil {
		launched[t.Name()] = map[string]bool{}
	}
	launched[t.Name()][kernel] = true
	launchedMu.Unlock()
	var runs [2]result
	for k, order := range []string{"forward", "reverse"} {
		dir := t.TempDir()
		var desc strings.Builder
		fmt.Fprintf(&desc, "kernel %s\ngrid %d 1 1\nblock %d 1 1\nshared 0\norder %s\n", kernel, grid, block, order)
		paths := map[int]string{}
		for i, a := range args {
			switch a.kind {
			case "in", "inout":
				p := filepath.Join(dir, fmt.Sprintf("a%d", i))
				if err := os.WriteFile(p, a.data, 0o644); err != nil {
					t.Fatal(err)
				}
				fmt.Fprintf(&desc, "ptr %s %s %d\n", a.kind, p, len(a.data))
				paths[i] = p
			case "out":
				p := filepath.Join(dir, fmt.Sprintf("a%d", i))
				fmt.Fprintf(&desc, "ptr out %s %d\n", p, a.n)
				paths[i] = p
			case "alias":
				fmt.Fprintf(&desc, "alias %d\n", a.n)
			case "null":
				desc.WriteString("null\n")
			case "i32", "i64":
				fmt.Fprintf(&desc, "%s %d\n", a.kind, a.i)
			case "f32":
				fmt.Fprintf(&desc, "f32 %08x\n", math.Float32bits(a.f))
			}
		}
		cmd := exec.Command(bin)
		cmd.Stdin = strings.NewReader(desc.String())
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("%s (grid %d, block %d, %s order): %v\n%s", kernel, grid, block, order, err, stderr.String())
		}
		runs[k] = result{}
		for i, a := range args {
			if a.kind == "in" || paths[i] == "" {
				continue
			}
			b, err := os.ReadFile(paths[i])
			if err != nil {
				t.Fatal(err)
			}
			runs[k][i] = b
		}
	}
	for i, b := range runs[0] {
		if !bytes.Equal(b, runs[1][i]) {
			return nil, fmt.Errorf("%s: argument %d differs between the forward and the reverse schedule (a race, or a read of memory no thread wrote)", kernel, i)
		}
	}
	return runs[0], nil
}

// closeTo fails unless the normwise relative error ‖got−want‖/‖want‖ is at most tol and every
// element has |got−want| ≤ tol·(|want| + 0.1·max|want|) (no NaN), and logs both. The floor of
// 0.1·max|want| admits the rounding of long sums that cancel (the CPU sums in other orders and
// fuses multiply-adds): 1e-6 of the largest value for tol = 1e-5; a wrong term is far above it.
func closeTo(t *testing.T, what string, got, want []float32, tol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d elements, want %d", what, len(got), len(want))
	}
	var scale, worst, num, den float64
	for _, w := range want {
		scale = max(scale, math.Abs(float64(w)))
	}
	if scale == 0 {
		t.Fatalf("%s: the reference is all zeros (a test that checks nothing)", what)
	}
	for i := range want {
		g, w := float64(got[i]), float64(want[i])
		d := math.Abs(g-w) / (math.Abs(w) + 0.1*scale)
		if math.IsNaN(g) || d > tol {
			t.Fatalf("%s: [%d] = %g, CPU gives %g (rel %.3g > %g)", what, i, g, w, d, tol)
		}
		worst = max(worst, d)
		num += (g - w) * (g - w)
		den += w * w
	}
	norm := math.Sqrt(num / den)
	if norm > tol {
		t.Fatalf("%s: normwise relative error %.3g > %g", what, norm, tol)
	}
	recordErr(what, max(worst, norm))
	t.Logf("%s: %d elements, max rel error %.3g, normwise %.3g", what, len(want), worst, norm)
}

// maxErr is the largest closeTo error per kernel check, printed by TestEveryKernelChecked.
var (
	maxErrMu sync.Mutex
	maxErr   = map[string]float64{}
)

func recordErr(what string, e float64) {
	maxErrMu.Lock()
	defer maxErrMu.Unlock()
	k, _, _ := strings.Cut(what, " ")
	maxErr[k] = max(maxErr[k], e)
}

// elems is the CUDA backend's grid for its grid-stride elementwise kernels
// (internal/backend/cuda/backend_cuda.go).
func elems(n int) int { return max(1, min((n+255)/256, 4096)) }
