// Package gemm is the single-precision matrix multiply of the CPU backend: a packed,
// cache-blocked driver (BLIS style: NC, KC, MC blocks around an MR×NR register tile) with
// micro-kernels in Go assembly for amd64 (AVX-512 12×32, AVX2+FMA 6×16) and a pure-Go
// micro-kernel everywhere else. The kernel set is chosen once, at start-up, from the CPU's
// features (LORACTL_GEMM=go|avx2|avx512 overrides the choice).
//
// Summation order (the determinism contract): C[i, j] is accumulated over k in blocks in order
// (K split into the fewest blocks of at most KC, of equal length rounded up to 8: kcBlock);
// within a block one register accumulator runs over k in order with fused multiply-adds
// starting from 0, and the block's sum is then added to C in memory (the first block of an
// overwriting product stores it). Edge tiles are computed by the same kernel on zero-padded
// panels. So an element's value depends only on its own row of A, column of B, K and the kernel
// set: not on M, N, the tile it falls in, or how the work is split between threads. A token
// computed alone gives the same bits as inside a long sequence.
//
// An operand may be a view of bfloat16 bits (RowMajorBF16, TransposedBF16: a frozen weight kept
// in BF16). It is widened to float32, exactly, while it is packed (bf16.go), so the product is
// bitwise the product with the widened float32 matrix, under the same contract.
package gemm

import (
	"fmt"
	"os"
	"sync"
	"unsafe"

	"github.com/loractl/loractl/internal/freelist"
)

// Mat is a strided matrix view: element (r, c) is D[r*RS + c*CS]. A view whose D is nil is
// backed by bfloat16 bits instead: element (r, c) is the float32 whose top 16 bits are
// H[r*RS + c*CS] (bf16.go). Such an operand is widened, exactly, while it is packed, so a
// product with a bfloat16 operand is bitwise the product with the widened float32 matrix.
type Mat struct {
	D      []float32
	H      []uint16 // bfloat16 bits; used when D is nil
	RS, CS int
}

// RowMajor returns the view of a row-major matrix with `cols` columns.
func RowMajor(d []float32, cols int) Mat { return Mat{D: d, RS: cols, CS: 1} }

// Transposed returns the view of the transpose of a row-major matrix with `cols` columns:
// element (r, c) of the view is d[c*cols + r].
func Transposed(d []float32, cols int) Mat { return Mat{D: d, RS: 1, CS: cols} }

// RowMajorBF16 is RowMajor over bfloat16 bits.
func RowMajorBF16(h []uint16, cols int) Mat { return Mat{H: h, RS: cols, CS: 1} }

// TransposedBF16 is Transposed over bfloat16 bits.
func TransposedBF16(h []uint16, cols int) Mat { return Mat{H: h, RS: 1, CS: cols} }

// bf16 reports whether v is backed by bfloat16 bits.
func (v Mat) bf16() bool { return v.D == nil && v.H != nil }

// size returns the number of stored elements behind v.
func (v Mat) size() int {
	if v.bf16() {
		return len(v.H)
	}
	return len(v.D)
}

// at returns element i of v's storage as a float32.
func (v Mat) at(i int) float32 {
	if v.D == nil {
		return BF16ToFloat32(v.H[i])
	}
	return v.D[i]
}

// kernelFunc computes the MR×NR tile c (row stride ldc elements) from the packed sliver a
// (kc×MR, a[k*MR+i]) and the packed panel b (kc×NR, b[k*NR+j]), kc ≥ 1:
// c = Σ_k a·b if acc == 0, else c += Σ_k a·b, the sum formed in registers first.
type kernelFunc func(kc int, a, b, c *float32, ldc int, acc int)

// stridedFunc is a kernel set's micro-kernel over strided operands: A element (i, k) at
// a[i*rsa + k*csa], B element (k, j) at b[k*ldb + j]. It performs the same multiply-adds in the
// same order as the set's kernelFunc, so an operand read in place gives the same bits as a
// packed one.
type stridedFunc func(kc int, a *float32, rsa, csa int, b *float32, ldb int, c *float32, ldc int, acc int)

// kernels is one kernel set with its blocking.
type kernels struct {
	name           string
	mr, nr         int
	kc, mc, nc     int // mc a multiple of mr, nc of nr
	kern           kernelFunc
	skern          stridedFunc // nil: every operand is packed
	ws             freelist.List[workspace]
	wsA, wsB, wsTm int
}

// workspace holds one worker's packing buffers.
type workspace struct {
	a, b, tmp []float32 // (mc, kc) packed slivers, (kc, nc) packed panels, (mr, nr) edge tile
}

func newKernels(name string, mr, nr, kc, mc, nc int, kern kernelFunc) *kernels {
	return &kernels{name: name, mr: mr, nr: nr, kc: kc, mc: mc, nc: nc, kern: kern,
		wsA: mc * kc, wsB: kc * nc, wsTm: mr * nr}
}

func (ks *kernels) getWS() *workspace {
	if w := ks.ws.Get(); w != nil {
		return w
	}
	// 64-byte aligned buffers.
	return &workspace{a: aligned(ks.wsA), b: aligned(ks.wsB), tmp: aligned(ks.wsTm)}
}

func aligned(n int) []float32 {
	s := make([]float32, n+16)
	off := 0
	if r := uintptr(unsafe.Pointer(&s[0])) % 64; r != 0 {
		off = int(64-r) / 4
	}
	return s[off : off+n : off+n]
}

var (
	all  []*kernels // every set usable on this CPU, best first; the Go set is last
	cur  *kernels
	mu   sync.Mutex
	goKS = newKernels("go", 4, 8, 256, 64, 1024, kernGo)
)

func init() {
	all = append(archKernels(), goKS)
	cur = all[0]
	if v := os.Getenv("LORACTL_GEMM"); v != "" {
		if _, err := SetImpl(v); err != nil {
			fmt.Fprintf(os.Stderr, "loractl: LORACTL_GEMM=%s ignored: %v\n", v, err)
		}
	}
}

// Impl returns the name of the kernel set in use ("avx512", "avx2" or "go").
func Impl() string { return cur.name }

// Impls returns the kernel sets usable on this CPU, best first.
func Impls() []string {
	var s []string
	for _, k := range all {
		s = append(s, k.name)
	}
	return s
}

// SetImpl selects a kernel set by name and returns the previous one. It is meant for tests and
// benchmarks and must not run concurrently with a product.
func SetImpl(name string) (prev string, err error) {
	mu.Lock()
	defer mu.Unlock()
	prev = cur.name
	for _, k := range append(all, optIn()...) {
		if k.name == name {
			cur = k
			return prev, nil
		}
	}
	return prev, fmt.Errorf("gemm: kernel set %q not available on this CPU (have %v)", name, Impls())
}

// Tile returns the register tile of the kernel set in use (rows, columns of C).
func Tile() (mr, nr int) { return cur.mr, cur.nr }

// Runner runs body.Run over [0, n) split into at most `workers` contiguous chunks whose bounds
// are multiples of align (but the last), and returns when all are done. The CPU backend passes
// its worker pool.
type Runner func(n, align, workers int, body Body)

// Body is the work a Runner splits: Run(lo, hi) does the chunk [lo, hi).
type Body interface{ Run(lo, hi int) }

// mulJob is one Mul split over the tiles of its larger dimension. Jobs are recycled, so a
// product allocates nothing in the steady state.
type mulJob struct {
	ks     *kernels
	c      []float32
	ldc    int
	a, b   Mat
	m, n   int
	k      int
	acc    bool
	byCols bool // chunks are columns [lo, hi) of C, else rows
}

var jobs freelist.List[mulJob]

// Run computes the chunk [lo, hi) of the job's rows or columns.
func (j *mulJob) Run(lo, hi int) {
	if j.byCols {
		j.ks.block(j.c, j.ldc, j.a, j.b, j.k, 0, j.m, lo, hi, j.acc)
	} else {
		j.ks.block(j.c, j.ldc, j.a, j.b, j.k, lo, hi, 0, j.n, j.acc)
	}
}

// Mul computes C (op)= A·B over rows [0, m) and columns [0, n) of C: C (m, n) with row stride
// ldc, A (m, k) and B (k, n) as views. With acc the product is added to C, else it overwrites
// C. The work is split once, over tiles of the larger of m and n, into at most `workers`
// chunks; run may be nil when workers ≤ 1.
func Mul(run Runner, workers int, c []float32, ldc int, a, b Mat, m, n, k int, acc bool) {
	if m <= 0 || n <= 0 {
		return
	}
	if (m-1)*ldc+n > len(c) {
		panic(fmt.Sprintf("gemm: C holds %d elements, need %d (m=%d n=%d ldc=%d)", len(c), (m-1)*ldc+n, m, n, ldc))
	}
	checkView("A", a, m, k)
	checkView("B", b, k, n)
	ks := cur
	if k == 0 {
		if !acc {
			for i := 0; i < m; i++ {
				clear(c[i*ldc : i*ldc+n])
			}
		}
		return
	}
	if workers <= 1 || run == nil {
		ks.block(c, ldc, a, b, k, 0, m, 0, n, acc)
		return
	}
	j := jobs.Get()
	if j == nil {
		j = new(mulJob)
	}
	*j = mulJob{ks: ks, c: c, ldc: ldc, a: a, b: b, m: m, n: n, k: k, acc: acc, byCols: n >= m}
	if j.byCols {
		run(n, ks.nr, workers, j)
	} else {
		run(m, ks.mr, workers, j)
	}
	*j = mulJob{}
	jobs.Put(j)
}

// checkView panics unless every element (r, c), r < rows, c < cols, of v lies in v.D.
func checkView(name string, v Mat, rows, cols int) {
	if rows == 0 || cols == 0 {
		return
	}
	if v.RS < 0 || v.CS < 0 || (rows-1)*v.RS+(cols-1)*v.CS >= v.size() {
		panic(fmt.Sprintf("gemm: %s view (%d×%d, strides %d, %d) exceeds its %d elements", name, rows, cols, v.RS, v.CS, v.size()))
	}
}

// kcBlock returns the k-block length for a product of depth K: K split into the fewest blocks
// of at most kcMax, as even as a multiple of 8 allows (with kcMax 320, K = 288 is one block,
// not 256 + 32, whose short second block would cost a full pass over C for 32 steps). It depends only on
// K, so the summation order stays a function of K alone.
func kcBlock(K, kcMax int) int {
	nb := (K + kcMax - 1) / kcMax
	kc := (K + nb - 1) / nb
	return min(kcMax, (kc+7)&^7)
}

// direct selects which operands the driver may read in place instead of packing (tests
// switch it to check that every path gives the same bits).
var direct = struct{ a, b bool }{true, true}

// directA reports whether block reads A in place: a row-major float32 A, a kernel set with a
// strided kernel, and few column panels per call (ncols ≤ 64: the skinny products of LoRA,
// where packing A would cost as much as the multiply; a wide product reuses a packed sliver
// across many panels), and a row stride that does not alias in the L1 cache.
func (ks *kernels) directA(a Mat, ncols int) bool {
	return direct.a && ks.skern != nil && a.D != nil && a.CS == 1 && ncols <= 64 && a.RS%1024 != 0
}

// directB is directA for B: a row-major float32 B read in place when the call has few rows.
func (ks *kernels) directB(b Mat, nrows int) bool {
	return direct.b && ks.skern != nil && b.D != nil && b.CS == 1 && nrows <= 64 && b.RS%1024 != 0
}

// block computes C[i0:i1, j0:j1] on the calling goroutine.
func (ks *kernels) block(c []float32, ldc int, a, b Mat, K, i0, i1, j0, j1 int, acc bool) {
	w := ks.getWS()
	mr, nr := ks.mr, ks.nr
	dA, dB := ks.directA(a, j1-j0), ks.directB(b, i1-i0)
	kcb := kcBlock(K, ks.kc)
	for jc := j0; jc < j1; jc += ks.nc {
		nc := min(ks.nc, j1-jc)
		for pc := 0; pc < K; pc += kcb {
			kc := min(kcb, K-pc)
			mode := 1
			if pc == 0 && !acc {
				mode = 0
			}
			if !dB {
				packB(w.b, b, pc, kc, jc, nc, nr)
			} else if e := nc % nr; e != 0 {
				packB(w.b[(nc-e)*kc:], b, pc, kc, jc+nc-e, e, nr) // only the edge panel
			}
			for ic := i0; ic < i1; ic += ks.mc {
				mc := min(ks.mc, i1-ic)
				if !dA {
					packA(w.a, a, ic, mc, pc, kc, mr)
				} else if e := mc % mr; e != 0 {
					packA(w.a[(mc-e)*kc:], a, ic+mc-e, e, pc, kc, mr) // only the edge sliver
				}
				for jr := 0; jr < nc; jr += nr {
					nv := min(nr, nc-jr)
					bp, ldb := &w.b[jr*kc], nr
					inB := dB && nv == nr
					if inB {
						bp, ldb = &b.D[pc*b.RS+jc+jr], b.RS
					}
					for ir := 0; ir < mc; ir += mr {
						mv := min(mr, mc-ir)
						ap, rsa, csa := &w.a[ir*kc], 1, mr
						inA := dA && mv == mr
						if inA {
							ap, rsa, csa = &a.D[(ic+ir)*a.RS+pc], a.RS, 1
						}
						ci := (ic+ir)*ldc + jc + jr
						full := mv == mr && nv == nr
						dst, ld, m := &c[ci], ldc, mode
						if !full {
							dst, ld, m = &w.tmp[0], nr, 0
						}
						if inA || inB {
							ks.skern(kc, ap, rsa, csa, bp, ldb, dst, ld, m)
						} else {
							ks.kern(kc, ap, bp, dst, ld, m)
						}
						if full {
							continue
						}
						// Edge tile: the kernel wrote a scratch tile; add or copy its valid part.
						for i := 0; i < mv; i++ {
							dst := c[ci+i*ldc : ci+i*ldc+nv]
							src := w.tmp[i*nr : i*nr+nv]
							if mode == 0 {
								copy(dst, src)
							} else {
								for j := range dst {
									dst[j] += src[j]
								}
							}
						}
					}
				}
			}
		}
	}
	ks.ws.Put(w)
}

// packA packs rows [i0, i0+mc) × columns [p0, p0+kc) of A into slivers of mr rows:
// sliver s at dst[s*mr*kc:], element (i, k) at [k*mr + i]; rows past the end are zero.
func packA(dst []float32, a Mat, i0, mc, p0, kc, mr int) {
	for s := 0; s*mr < mc; s++ {
		d := dst[s*mr*kc : (s+1)*mr*kc]
		rows := min(mr, mc-s*mr)
		r0 := i0 + s*mr
		switch {
		case a.CS == 1 && a.bf16():
			// Rows of A are contiguous bfloat16 streams: widen while transposing.
			transposeWidenInto(d, mr, a.H, r0*a.RS+p0, a.RS, rows, kc)
		case a.CS == 1:
			// Rows of A are contiguous: `rows` streams become the sliver.
			transposeF32(d, mr, a.D, r0*a.RS+p0, a.RS, rows, kc)
		case a.RS == 1 && a.bf16():
			// Columns of A are contiguous bfloat16 runs: widen one run per k.
			widenRows(d, mr, a.H, r0+p0*a.CS, a.CS, kc, rows)
		case a.RS == 1 && a.D != nil && rows == 6 && mr == 6:
			// Columns of A are contiguous: one 6-float run per k (fixed-size copies, no memmove).
			for k := 0; k < kc; k++ {
				base := r0 + (p0+k)*a.CS
				*(*[6]float32)(d[k*6:]) = *(*[6]float32)(a.D[base:])
			}
		default:
			for k := 0; k < kc; k++ {
				base := r0*a.RS + (p0+k)*a.CS
				dk := d[k*mr : k*mr+rows]
				if a.RS == 1 {
					copy(dk, a.D[base:base+rows])
				} else {
					for i := range dk {
						dk[i] = a.at(base + i*a.RS)
					}
				}
			}
		}
		if rows < mr {
			for k := 0; k < kc; k++ {
				clear(d[k*mr+rows : (k+1)*mr])
			}
		}
	}
}

// packB packs rows [p0, p0+kc) × columns [j0, j0+nc) of B into panels of nr columns:
// panel p at dst[p*nr*kc:], element (k, j) at [k*nr + j]; columns past the end are zero.
func packB(dst []float32, b Mat, p0, kc, j0, nc, nr int) {
	for p := 0; p*nr < nc; p++ {
		d := dst[p*nr*kc : (p+1)*nr*kc]
		cols := min(nr, nc-p*nr)
		c0 := j0 + p*nr
		switch {
		case b.RS == 1 && b.bf16():
			// Columns of B are contiguous bfloat16 streams (the NT form over a BF16 weight).
			transposeWidenInto(d, nr, b.H, c0*b.CS+p0, b.CS, cols, kc)
		case b.RS == 1:
			// Columns of B are contiguous (B is a transposed row-major matrix).
			transposeF32(d, nr, b.D, c0*b.CS+p0, b.CS, cols, kc)
		case b.CS == 1 && b.bf16():
			// Rows of B are contiguous bfloat16 runs (the NN form over a BF16 weight).
			widenRows(d, nr, b.H, p0*b.RS+c0, b.RS, kc, cols)
		case b.CS == 1 && b.D != nil && cols == 16 && nr == 16:
			// Rows of B are contiguous: one 16-float run per k (fixed-size copies, no memmove).
			for k := 0; k < kc; k++ {
				base := (p0+k)*b.RS + c0
				*(*[16]float32)(d[k*16:]) = *(*[16]float32)(b.D[base:])
			}
		default:
			for k := 0; k < kc; k++ {
				base := (p0+k)*b.RS + c0*b.CS
				dk := d[k*nr : k*nr+cols]
				if b.CS == 1 {
					copy(dk, b.D[base:base+cols])
				} else {
					for j := range dk {
						dk[j] = b.at(base + j*b.CS)
					}
				}
			}
		}
		if cols < nr {
			for k := 0; k < kc; k++ {
				clear(d[k*nr+cols : (k+1)*nr])
			}
		}
	}
}

// maxTile bounds mr and nr of every kernel set.
const maxTile = 32

// kernGo is the portable 4×8 micro-kernel.
func kernGo(kc int, ap, bp, cp *float32, ldc int, acc int) {
	const mr, nr = 4, 8
	a := unsafe.Slice(ap, kc*mr)
	b := unsafe.Slice(bp, kc*nr)
	var s [mr][nr]float32
	for k := 0; k < kc; k++ {
		bk := (*[nr]float32)(b[k*nr : k*nr+nr])
		ak := (*[mr]float32)(a[k*mr : k*mr+mr])
		for i := range mr {
			ai := ak[i]
			si := &s[i]
			for j := range nr {
				si[j] += ai * bk[j]
			}
		}
	}
	c := unsafe.Slice(cp, (mr-1)*ldc+nr)
	for i := range mr {
		row := c[i*ldc : i*ldc+nr]
		if acc == 0 {
			copy(row, s[i][:])
		} else {
			for j := range row {
				row[j] += s[i][j]
			}
		}
	}
}
