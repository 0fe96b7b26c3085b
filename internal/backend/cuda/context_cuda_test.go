//go:build cuda

package cuda

import (
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
)

// TestContextFakeDriver runs TestContextChild in a child process whose loader finds the
// stand-in driver (memory in host RAM): the context, its owner thread, the caching allocator
// and the copies, without a GPU.
func TestContextFakeDriver(t *testing.T) {
	dir, _ := fakeLibs(t) // LD_LIBRARY_PATH comes before the system's folders: the stand-in wins
	cmd := exec.Command(os.Args[0], "-test.run=^TestContextChild$", "-test.v")
	cmd.Env = append(os.Environ(), "LORACTL_CUDA_FAKE=1", "LD_LIBRARY_PATH="+dir)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestContextChild") {
		t.Fatalf("child: %v\n%s", err, out)
	}
}

func TestContextChild(t *testing.T) {
	if os.Getenv("LORACTL_CUDA_FAKE") != "1" {
		t.Skip("runs inside TestContextFakeDriver, against the stand-in driver")
	}
	c, err := Open(0)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// Every call runs on one OS thread, whichever goroutine makes it.
	var mu sync.Mutex
	tids := map[int]bool{}
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.do(func() error { mu.Lock(); tids[gettid()] = true; mu.Unlock(); return nil })
		}()
	}
	wg.Wait()
	if len(tids) != 1 || tids[gettid()] {
		t.Errorf("driver calls ran on threads %v (the test's is %d): want one owner thread", tids, gettid())
	}

	// Round trips, float32 and 16-bit, and a device-to-device copy.
	r := rand.New(rand.NewPCG(1, 2))
	x := make([]float32, 1000)
	for i := range x {
		x[i] = r.Float32()*2 - 1
	}
	p, err := c.Alloc(4 * len(x))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.UploadF32(p, x); err != nil {
		t.Fatal(err)
	}
	q, _ := c.Alloc(4 * len(x))
	if err := c.CopyD(q, p, 4*len(x)); err != nil {
		t.Fatal(err)
	}
	y := make([]float32, len(x))
	if err := c.DownloadF32(y, q); err != nil || !slices.Equal(x, y) {
		t.Fatalf("float32 round trip: %v", err)
	}
	h := []uint16{0x3f80, 0xbf80, 0x7fc0, 1}
	ph, _ := c.Alloc(2 * len(h))
	g := make([]uint16, len(h))
	if c.UploadU16(ph, h) != nil || c.DownloadU16(g, ph) != nil || !slices.Equal(g, h) {
		t.Fatalf("16-bit round trip: %v", g)
	}

	// The cache: a freed block of a size class is reused, no new driver allocation.
	allocs, inUse, _ := c.AllocStats()
	if allocs != 3 || inUse != 3 {
		t.Fatalf("after 3 allocations: %d driver allocations, %d in use", allocs, inUse)
	}
	c.Free(p)
	c.Free(q)
	for range 10 {
		a, _ := c.Alloc(4000) // same size class as p, q (4000 → 4096)
		b, _ := c.Alloc(3900)
		c.Free(a)
		c.Free(b)
	}
	if allocs, inUse, cached := c.AllocStats(); allocs != 3 || inUse != 1 || cached != 2*4096 {
		t.Errorf("steady state: %d driver allocations (want 3), %d in use (want 1), %d bytes cached (want 8192)", allocs, inUse, cached)
	}
	if err := c.Free(p + 1); err == nil {
		t.Error("Free of an unknown address succeeded")
	}

	// A failed driver allocation names the call and the error; the cache is emptied and the
	// allocation retried first.
	if _, err := c.Alloc(2 << 30); err == nil || !strings.Contains(err.Error(), "cuMemAlloc") {
		t.Errorf("2 GiB on a device that refuses it: %v", err)
	}
	if _, _, cached := c.AllocStats(); cached != 0 {
		t.Errorf("%d bytes still cached after an out-of-memory retry", cached)
	}
	// Kernels: the module loaded at Open has every kernel; the stand-in driver cannot run them,
	// and the launch reports that with the kernel's name; a wrong argument type is refused first.
	if err := c.Launch("axpy", 1, 32, 0, ph, ph, float32(2), int64(4)); err == nil || !strings.Contains(err.Error(), "cuLaunchKernel(axpy)") || !strings.Contains(err.Error(), "801") {
		t.Errorf("launch on the stand-in driver: %v", err)
	}
	if err := c.Launch("axpy", 1, 32, 0, ph, 1.5); err == nil || !strings.Contains(err.Error(), "float64") {
		t.Errorf("a float64 argument: %v", err)
	}
	if err := c.Launch("no_such_kernel", 1, 32, 0); err == nil || !strings.Contains(err.Error(), "no_such_kernel") {
		t.Errorf("unknown kernel: %v", err)
	}
	if err := c.Memset32(ph, 0x3f803f80, 2); err != nil || c.DownloadU16(g, ph) != nil || !slices.Equal(g, []uint16{0x3f80, 0x3f80, 0x3f80, 0x3f80}) {
		t.Errorf("Memset32: %v %x", err, g)
	}

	// The three row-major products through the stand-in cuBLAS, against loops here.
	N, C, OC := 5, 7, 3
	x, w, dy := randv(r, N*C, 1), randv(r, OC*C, 1), randv(r, N*OC, 1)
	y0, dx0, dw0 := randv(r, N*OC, 1), randv(r, N*C, 1), randv(r, OC*C, 1)
	px, pw, pdy := dev(t, c, x, 0), dev(t, c, w, 0), dev(t, c, dy, 0)
	for _, acc := range []bool{false, true} {
		py := dev(t, c, y0, 0)
		if !acc {
			c.Memset32(py, 0x7fc00000, N*OC) // beta 0: the old y (NaN here) is not read
		}
		if err := c.MatMulNT(py, px, pw, N, C, OC, acc); err != nil {
			t.Fatal(err)
		}
		want := make([]float32, N*OC)
		for n := range N {
			for o := range OC {
				var s float64
				for k := range C {
					s += float64(x[n*C+k]) * float64(w[o*C+k])
				}
				if acc {
					s += float64(y0[n*OC+o])
				}
				want[n*OC+o] = float32(s)
			}
		}
		closeTo(t, "MatMulNT", get(t, c, py, N*OC), want, 2.5e-6)
	}
	pdx, pdw := dev(t, c, dx0, 0), dev(t, c, dw0, 0)
	if err := c.MatMulNN(pdx, pdy, pw, N, C, OC); err != nil {
		t.Fatal(err)
	}
	if err := c.MatMulTN(pdw, pdy, px, N, C, OC); err != nil {
		t.Fatal(err)
	}
	wantDx, wantDw := slices.Clone(dx0), slices.Clone(dw0)
	for n := range N {
		for k := range C {
			for o := range OC {
				wantDx[n*C+k] += dy[n*OC+o] * w[o*C+k]
				wantDw[o*C+k] += dy[n*OC+o] * x[n*C+k]
			}
		}
	}
	closeTo(t, "MatMulNN", get(t, c, pdx, N*C), wantDx, 2.5e-6)
	closeTo(t, "MatMulTN", get(t, c, pdw, OC*C), wantDw, 2.5e-6)

	// The backend over the stand-in driver: memory ops work, an op's launch failure (the
	// stand-in cannot run kernels) comes back from the next Download, naming the kernel.
	be, err := New(0)
	if err != nil {
		t.Fatal(err)
	}
	xb := be.Alloc(10)
	zero := make([]float32, 10)
	if err := be.Download(zero, xb); err != nil || !slices.Equal(zero, make([]float32, 10)) {
		t.Fatalf("a new buffer is not zero: %v %v", zero, err)
	}
	src := randv(r, 10, 1)
	if err := be.Upload(xb, src); err != nil {
		t.Fatal(err)
	}
	yb := be.Alloc(12)
	be.Copy(yb, 2, xb, 0, 10)
	got := make([]float32, 12)
	if err := be.Download(got, yb); err != nil || !slices.Equal(got[2:], src) || got[0] != 0 {
		t.Fatalf("Copy: %v %v", got, err)
	}
	be.AddForward(xb, xb, xb, 10)
	if err := be.Download(zero, xb); err == nil || !strings.Contains(err.Error(), "add_forward") {
		t.Errorf("a failed launch: Download returned %v", err)
	}
	if err := be.Download(zero, xb); err != nil {
		t.Errorf("the error was reported twice: %v", err)
	}
	// A training op's failure is reported the same way.
	be.SwiGLUBackward(yb, nil, xb, xb, xb, 10)
	if err := be.Download(zero, xb); err == nil || !strings.Contains(err.Error(), "swiglu_backward") {
		t.Errorf("a failed training launch: Download returned %v", err)
	}
	be.Close()

	free, total, err := c.MemInfo()
	if err != nil || total != 80<<30 || free >= total {
		t.Errorf("MemInfo = %d free of %d, %v", free, total, err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Alloc(4); err == nil {
		t.Error("Alloc after Close succeeded")
	}
}
