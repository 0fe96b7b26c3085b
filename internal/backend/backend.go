// Package backend defines the small compute interface that the model, and later the trainer and
// the evaluator, run on. It is the neutral package between the model code and the devices: the
// pure-Go CPU backend (internal/backend/cpu) is the reference implementation, and faster
// backends (CUDA, assembly GEMM) are checked op by op against it.
//
// The design follows llm.c: every op is a plain function of explicit dimensions (N rows, C
// channels, T tokens, NH heads, D head size, ...) over flat row-major float32 arrays, named
// XxxForward (backward ops come later, as XxxBackward). Storage is an opaque Buffer that the
// backend allocates, so that a GPU backend can keep it in device memory; data moves in and out
// only through Upload and Download.
//
// Optional capabilities (fused kernels, bf16 weights, ...) are added later as extra interfaces
// that callers detect with a type assertion, in the style of ggml's optional slots and ollama's
// ml package, so this interface stays small.
package backend

import "fmt"

// DType is the element type of weights as stored in a checkpoint or kept by a backend.
// Every op of the Backend interface computes in float32; the other types are storage formats.
type DType uint8

// The element types a backend may store.
const (
	F32       DType = iota // IEEE 754 binary32
	BF16                   // bfloat16: the top 16 bits of a float32
	F16                    // IEEE 754 binary16
	Quantized              // a packed (quantized) frozen weight, see PackedStore
)

// String returns the safetensors spelling of d ("F32", "BF16", "F16").
func (d DType) String() string {
	switch d {
	case F32:
		return "F32"
	case BF16:
		return "BF16"
	case F16:
		return "F16"
	case Quantized:
		return "quantized"
	}
	return fmt.Sprintf("DType(%d)", uint8(d))
}

// Size returns the number of bytes per element of d, or 0 if d is unknown.
func (d DType) Size() int {
	switch d {
	case F32:
		return 4
	case BF16, F16:
		return 2
	}
	return 0
}

// ParseDType maps a name ("F32", "float32", "BF16", "bfloat16", "F16", "float16") to a DType.
func ParseDType(s string) (DType, error) {
	switch s {
	case "F32", "f32", "float32", "fp32":
		return F32, nil
	case "BF16", "bf16", "bfloat16":
		return BF16, nil
	case "F16", "f16", "float16", "fp16", "half":
		return F16, nil
	}
	return 0, fmt.Errorf("unknown dtype %q (want F32, BF16 or F16)", s)
}

// Buffer is an opaque handle to a backend-owned array of float32 elements. Only the backend
// that allocated a Buffer may use it; on a GPU backend its storage lives in device memory.
type Buffer interface {
	// Len returns the number of float32 elements in the buffer.
	Len() int
}

// Backend runs the forward ops of a Llama-family transformer.
//
// Conventions:
//   - All arrays are row-major float32 Buffers; the shape of every argument is given in the
//     op's comment, e.g. (N, C) means N rows of C contiguous elements.
//   - Ops do not return errors. Their dimensions are the caller's responsibility (the model
//     validates user input before calling them); a backend may panic on inconsistent dimensions,
//     which is a programming error. A backend that runs asynchronously reports device failures
//     from the next Upload or Download.
//   - Unless an op says otherwise, out must not overlap its inputs.
//   - A Backend need not be safe for concurrent use.
type Backend interface {
	// Name identifies the backend in logs ("cpu", "cuda:0", ...).
	Name() string

	// Alloc returns a new zero-filled buffer of n float32 elements.
	Alloc(n int) Buffer
	// Free releases b's storage. Using b afterwards is an error.
	Free(b Buffer)
	// Upload copies src into dst; len(src) must equal dst.Len().
	Upload(dst Buffer, src []float32) error
	// Download copies src into dst; len(dst) must equal src.Len().
	Download(dst []float32, src Buffer) error
	// Copy copies n elements within the device: dst[dstOff:dstOff+n] = src[srcOff:srcOff+n]
	// (appending new keys and values to a KV cache, selecting rows). The ranges must not
	// overlap if dst and src are the same buffer.
	Copy(dst Buffer, dstOff int, src Buffer, srcOff, n int)

	// EmbeddingForward gathers rows of table: out[n, :] = table[tokens[n], :].
	// out (N, C), table (V, C), N = len(tokens); every token is in [0, V).
	EmbeddingForward(out, table Buffer, tokens []int, C int)

	// RMSNormForward normalises each row as Hugging Face's LlamaRMSNorm does, in float32:
	// out[n, :] = x[n, :] / sqrt(mean(x[n, :]²) + eps) * w.
	// out (N, C), x (N, C), w (C). out may be x (in place).
	// Per-head RMSNorm (Qwen3's q_norm, k_norm) is the same op with N = T·heads, C = head_dim.
	RMSNormForward(out, x, w Buffer, N, C int, eps float32)

	// MatMulForward computes a Linear layer: out = x · wᵀ + bias.
	// out (N, OC), x (N, C), w (OC, C) row-major as in torch.nn.Linear, bias (OC) or nil.
	MatMulForward(out, x, w, bias Buffer, N, C, OC int)

	// RoPEForward rotates x in place with rotary position embeddings in Hugging Face's
	// rotate_half layout: within each head the pairs are (i, i+D/2) for i < D/2, rotated by the
	// angle pos·invFreq[i]. Row t of every batch element is at position pos0+t.
	// x (B, T, NH, D), invFreq (D/2).
	RoPEForward(x, invFreq Buffer, B, T, NH, D, pos0 int)

	// AttentionForward computes causal grouped-query attention over a key/value cache.
	// Query row t of batch element b is at position pos0+t and attends to the cached keys at
	// positions 0..pos0+t, with scores scaled by 1/sqrt(D) and a softmax over them; query head h
	// uses key/value head h/(NH/NKV). The cache rows 0..pos0+T-1 must be filled.
	// out (B, T, NH·D), q (B, T, NH·D), k (B, S, NKV·D), v (B, S, NKV·D), pos0+T ≤ S.
	AttentionForward(out, q, k, v Buffer, B, T, S, pos0, NH, NKV, D int)

	// SwiGLUForward computes the gated MLP activation out = silu(gate) * up, with
	// silu(x) = x / (1 + exp(-x)). out (N), gate (N), up (N). out may be gate or up.
	SwiGLUForward(out, gate, up Buffer, N int)

	// AddForward computes the residual sum out = a + b. out (N), a (N), b (N).
	// out may be a or b.
	AddForward(out, a, b Buffer, N int)
}
