//go:build cuda

package cuda

import (
	"fmt"
	"math"
	"sync"

	"github.com/loractl/loractl/internal/backend"
)

// Backend runs the forward ops of backend.Backend on one GPU (inference: generate, eval). The
// training ops (backend.Trainer) come next. Ops return no errors (the interface's contract):
// the first failure is kept and returned by the next Upload or Download, as for any
// asynchronous backend; an inconsistent dimension panics like on the CPU.
type Backend struct {
	ctx *Context
	mu  sync.Mutex
	err error // the first failure since the last Upload/Download
}

// Buffer is a device block of n float32 elements (or n bfloat16 ones for frozen weights).
type Buffer struct {
	p    Ptr
	n    int
	bf16 bool
}

// Len returns the number of elements.
func (b *Buffer) Len() int { return b.n }

var _ backend.Backend = (*Backend)(nil)

// New opens device ordinal.
func New(ordinal int) (*Backend, error) {
	c, err := Open(ordinal)
	if err != nil {
		return nil, err
	}
	return &Backend{ctx: c}, nil
}

// Close releases the device.
func (be *Backend) Close() error { return be.ctx.Close() }

// Name returns "cuda:N".
func (be *Backend) Name() string { return fmt.Sprintf("cuda:%d", be.ctx.Ordinal) }

// fail records the first error.
func (be *Backend) fail(err error) {
	if err == nil {
		return
	}
	be.mu.Lock()
	if be.err == nil {
		be.err = err
	}
	be.mu.Unlock()
}

// takeErr returns and clears the recorded error.
func (be *Backend) takeErr() error {
	be.mu.Lock()
	defer be.mu.Unlock()
	err := be.err
	be.err = nil
	return err
}

func buf(b backend.Buffer) *Buffer {
	if b == nil {
		return nil
	}
	cb, ok := b.(*Buffer)
	if !ok {
		panic(fmt.Sprintf("cuda: got a %T buffer, which another backend allocated", b))
	}
	return cb
}

func need(op, name string, b *Buffer, n int) {
	if b == nil || b.n < n {
		have := 0
		if b != nil {
			have = b.n
		}
		panic(fmt.Sprintf("cuda: %s: %s has %d elements, the dimensions need %d", op, name, have, n))
	}
	if b.bf16 {
		panic(fmt.Sprintf("cuda: %s: %s is a BF16 weight buffer, which this op does not take", op, name))
	}
}

// Alloc returns a zero-filled buffer of n float32 elements.
func (be *Backend) Alloc(n int) backend.Buffer {
	p, err := be.ctx.Alloc(4 * max(n, 1))
	if err == nil {
		err = be.ctx.Memset32(p, 0, n)
	}
	if err != nil {
		panic(fmt.Sprintf("cuda: Alloc(%d): %v", n, err))
	}
	return &Buffer{p: p, n: n}
}

// Free returns the block to the context's cache.
func (be *Backend) Free(b backend.Buffer) {
	if cb := buf(b); cb != nil && cb.p != 0 {
		be.fail(be.ctx.Free(cb.p))
		cb.p, cb.n = 0, 0
	}
}

// Upload copies src to dst, first reporting any failure of earlier ops.
func (be *Backend) Upload(dst backend.Buffer, src []float32) error {
	if err := be.takeErr(); err != nil {
		return err
	}
	d := buf(dst)
	if d.n != len(src) || d.bf16 {
		return fmt.Errorf("cuda: Upload: buffer holds %d elements, source has %d", d.n, len(src))
	}
	return be.ctx.UploadF32(d.p, src)
}

// Download waits for the device and copies src to dst, reporting any failure of earlier ops.
func (be *Backend) Download(dst []float32, src backend.Buffer) error {
	s := buf(src)
	if s.n != len(dst) {
		return fmt.Errorf("cuda: Download: buffer holds %d elements, destination has %d", s.n, len(dst))
	}
	if err := be.ctx.Sync(); err != nil {
		be.fail(err)
	}
	if err := be.takeErr(); err != nil {
		return err
	}
	if s.bf16 {
		h := make([]uint16, len(dst))
		if err := be.ctx.DownloadU16(h, s.p); err != nil {
			return err
		}
		for i, v := range h {
			dst[i] = bf16ToF32(v)
		}
		return nil
	}
	return be.ctx.DownloadF32(dst, s.p)
}

// Copy copies n elements between device buffers.
func (be *Backend) Copy(dst backend.Buffer, dstOff int, src backend.Buffer, srcOff, n int) {
	d, s := buf(dst), buf(src)
	if n < 0 || dstOff < 0 || srcOff < 0 || dstOff+n > d.n || srcOff+n > s.n || d.bf16 || s.bf16 {
		panic(fmt.Sprintf("cuda: Copy(dstOff=%d, srcOff=%d, n=%d) out of range for buffers of %d and %d elements", dstOff, srcOff, n, d.n, s.n))
	}
	be.fail(be.ctx.CopyD(d.p+Ptr(4*dstOff), s.p+Ptr(4*srcOff), 4*n))
}

// ints uploads host ints as int32 into a scratch block (freed by the caller).
func (be *Backend) ints(v []int) Ptr {
	x := make([]float32, len(v))
	for i, id := range v {
		x[i] = f32bits(uint32(int32(id)))
	}
	p, err := be.ctx.Alloc(4 * max(len(v), 1))
	if err == nil {
		err = be.ctx.UploadF32(p, x)
	}
	be.fail(err)
	return p
}

// elems is the grid for an elementwise kernel over n elements (grid-stride loops inside).
func elems(n int) int { return max(1, min((n+255)/256, 4096)) }

// EmbeddingForward gathers rows: out[n, :] = table[tokens[n], :]; table F32 or BF16.
func (be *Backend) EmbeddingForward(out, table backend.Buffer, tokens []int, C int) {
	o, tb := buf(out), buf(table)
	N := len(tokens)
	need("EmbeddingForward", "out", o, N*C)
	V := tb.n / max(C, 1)
	for _, id := range tokens {
		if id < 0 || id >= V {
			panic("cuda: EmbeddingForward: token id out of range (the caller must validate tokens)")
		}
	}
	if N == 0 {
		return
	}
	ids := be.ints(tokens)
	fn := "embedding_forward"
	if tb.bf16 {
		fn = "embedding_forward_bf16"
	}
	be.fail(be.ctx.Launch(fn, N, 256, 0, o.p, tb.p, ids, int32(N), int32(C)))
	be.fail(be.ctx.Free(ids))
}

// RMSNormForward: out = x / sqrt(mean(x²) + eps) · w, per row; out may be x.
func (be *Backend) RMSNormForward(out, x, w backend.Buffer, N, C int, eps float32) {
	o, xs, ws := buf(out), buf(x), buf(w)
	need("RMSNormForward", "out", o, N*C)
	need("RMSNormForward", "x", xs, N*C)
	need("RMSNormForward", "w", ws, C)
	if N > 0 {
		be.fail(be.ctx.Launch("rmsnorm_forward", N, 256, 0, o.p, xs.p, ws.p, int32(N), int32(C), eps))
	}
}

// MatMulForward: out (N, OC) = x (N, C)·wᵀ + bias, by cuBLAS (w F32).
func (be *Backend) MatMulForward(out, x, w, bias backend.Buffer, N, C, OC int) {
	o, xs, ws := buf(out), buf(x), buf(w)
	need("MatMulForward", "out", o, N*OC)
	need("MatMulForward", "x", xs, N*C)
	need("MatMulForward", "w", ws, OC*C)
	if N == 0 || OC == 0 {
		return
	}
	be.fail(be.ctx.MatMulNT(o.p, xs.p, ws.p, N, C, OC, false))
	if b := buf(bias); b != nil {
		need("MatMulForward", "bias", b, OC)
		be.fail(be.ctx.Launch("add_bias", elems(N*OC), 256, 0, o.p, b.p, int32(N), int32(OC)))
	}
}

// RoPEForward rotates x (B, T, NH, D) in place; row t is at position pos0+t.
func (be *Backend) RoPEForward(x, invFreq backend.Buffer, B, T, NH, D, pos0 int) {
	xs, inv := buf(x), buf(invFreq)
	need("RoPEForward", "x", xs, B*T*NH*D)
	need("RoPEForward", "invFreq", inv, D/2)
	N := B * T
	if N == 0 {
		return
	}
	pos := make([]int, N)
	for n := range pos {
		pos[n] = pos0 + n%T
	}
	pp := be.ints(pos)
	be.fail(be.ctx.Launch("rope_pos", elems(N*NH*D/2), 256, 0, xs.p, inv.p, pp, int32(N), int32(NH), int32(D), float32(1)))
	be.fail(be.ctx.Free(pp))
}

// AttentionForward: causal GQA over a KV cache (see backend.Backend), one block per query row.
func (be *Backend) AttentionForward(out, q, k, v backend.Buffer, B, T, S, pos0, NH, NKV, D int) {
	o, qs, ks, vs := buf(out), buf(q), buf(k), buf(v)
	need("AttentionForward", "out", o, B*T*NH*D)
	need("AttentionForward", "q", qs, B*T*NH*D)
	need("AttentionForward", "k", ks, B*S*NKV*D)
	need("AttentionForward", "v", vs, B*S*NKV*D)
	if pos0+T > S || NKV <= 0 || NH%NKV != 0 {
		panic("cuda: AttentionForward: need pos0+T <= S and NKV dividing NH")
	}
	rows := B * NH * T
	if rows == 0 {
		return
	}
	att, err := be.ctx.Alloc(4 * rows * (pos0 + T))
	if err != nil {
		be.fail(err)
		return
	}
	be.fail(be.ctx.Launch("attention_forward", rows, 128, 0, o.p, qs.p, ks.p, vs.p, att,
		int32(B), int32(T), int32(S), int32(pos0), int32(NH), int32(NKV), int32(D)))
	be.fail(be.ctx.Free(att))
}

// SwiGLUForward: out = silu(gate)·up; out may be gate or up.
func (be *Backend) SwiGLUForward(out, gate, up backend.Buffer, N int) {
	o, g, u := buf(out), buf(gate), buf(up)
	need("SwiGLUForward", "out", o, N)
	need("SwiGLUForward", "gate", g, N)
	need("SwiGLUForward", "up", u, N)
	if N > 0 {
		be.fail(be.ctx.Launch("swiglu_forward", elems(N), 256, 0, o.p, g.p, u.p, int64(N)))
	}
}

// AddForward: out = a + b; out may be a or b.
func (be *Backend) AddForward(out, a, b backend.Buffer, N int) {
	o, as, bs := buf(out), buf(a), buf(b)
	need("AddForward", "out", o, N)
	need("AddForward", "a", as, N)
	need("AddForward", "b", bs, N)
	if N > 0 {
		be.fail(be.ctx.Launch("add_forward", elems(N), 256, 0, o.p, as.p, bs.p, int64(N)))
	}
}

func f32bits(u uint32) float32 { return math.Float32frombits(u) }

func bf16ToF32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// OpenBackend opens device ordinal as a backend.Backend.
func OpenBackend(ordinal int) (backend.Backend, error) {
	be, err := New(ordinal)
	if err != nil {
		return nil, err
	}
	return be, nil
}
