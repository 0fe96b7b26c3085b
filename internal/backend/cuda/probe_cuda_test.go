//go:build cuda

package cuda

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The probe runs in a child process (this test binary again) so that LD_LIBRARY_PATH, which
// the dynamic loader reads only at start-up, points at the fake libraries.
func TestMain(m *testing.M) {
	if os.Getenv("LORACTL_PROBE_CHILD") == "1" {
		json.NewEncoder(os.Stdout).Encode(Probe())
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func probeIn(t *testing.T, libdir string, env ...string) Report {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "LORACTL_PROBE_CHILD=1", "LD_LIBRARY_PATH="+libdir)
	cmd.Env = append(cmd.Env, env...)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("probe child: %v", err)
	}
	var r Report
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("probe child printed %q: %v", out, err)
	}
	return r
}

// fakeLibs builds the stand-in libcuda.so.1 (one device, memory in host RAM) and
// libcublas.so.12 (a plain sgemm) into a temporary folder and returns it (with gcc's path).
func fakeLibs(t *testing.T) (dir, gcc string) {
	t.Helper()
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skip("gcc not found: cannot build the fake driver library")
	}
	dir = t.TempDir()
	for _, c := range [][]string{
		{"-shared", "-fPIC", "-o", filepath.Join(dir, "libcuda.so.1"), "testdata/fakecuda.c"},
		{"-shared", "-fPIC", "-o", filepath.Join(dir, "libcublas.so.12"), "testdata/fakecublas.c"},
	} {
		if out, err := exec.Command(gcc, c...).CombinedOutput(); err != nil {
			t.Fatalf("gcc %v: %v\n%s", c, err, out)
		}
	}
	return dir, gcc
}

// TestProbeFakeDriver builds a stand-in libcuda.so.1 (one device) and libcublas.so.12 and
// checks that the shim loads them and reports the device.
func TestProbeFakeDriver(t *testing.T) {
	dir, gcc := fakeLibs(t)
	r := probeIn(t, dir)
	want := Device{Index: 0, Name: "Fake GPU 80GB", MemoryBytes: 80 << 30, ComputeMajor: 9, ComputeMinor: 0}
	if !r.Built || !r.Usable() || len(r.Devices) != 1 || r.Devices[0] != want {
		t.Fatalf("Probe() = %+v, want one usable %+v", r, want)
	}
	if r.LibCUDA != "libcuda.so.1" || r.LibCUBLAS != "libcublas.so.12" || r.DriverVersion != 12040 {
		t.Errorf("libraries %q, %q, driver %d", r.LibCUDA, r.LibCUBLAS, r.DriverVersion)
	}
	if s := r.String(); !strings.Contains(s, "cuda:0   Fake GPU 80GB, 80.0 GiB, compute capability 9.0") || !strings.Contains(s, "CUDA 12.4") {
		t.Errorf("String() = %q", s)
	}

	// LORACTL_CUBLAS names the library explicitly.
	alt := filepath.Join(dir, "mycublas.so")
	if out, err := exec.Command(gcc, "-shared", "-fPIC", "-o", alt, "testdata/fakecublas.c").CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	if r = probeIn(t, dir, "LORACTL_CUBLAS="+alt); !r.Usable() || r.LibCUBLAS != alt {
		t.Errorf("LORACTL_CUBLAS=%s: %+v", alt, r)
	}

	// Without cuBLAS the device is listed but not usable, and the report says what to install.
	os.Remove(filepath.Join(dir, "libcublas.so.12"))
	if real := Probe(); real.LibCUBLAS != "" {
		t.Skipf("this machine has a system cuBLAS (%s): cannot test its absence", real.LibCUBLAS)
	}
	r = probeIn(t, dir)
	if r.Usable() || len(r.Devices) != 1 || !strings.Contains(r.Err, "LORACTL_CUBLAS") {
		t.Errorf("without cuBLAS: %+v", r)
	}
}

// TestProbeNoDriver: without libcuda.so.1 the report names the missing library.
func TestProbeNoDriver(t *testing.T) {
	if real := Probe(); real.LibCUDA != "" {
		t.Skipf("this machine has an NVIDIA driver (%s): cannot test its absence", real.LibCUDA)
	}
	r := probeIn(t, t.TempDir())
	if r.Usable() || !strings.Contains(r.Err, "libcuda.so.1") {
		t.Fatalf("Probe() without a driver = %+v", r)
	}
}
