package backend

// Packed is a frozen weight held in a compressed form (a quantized tensor, e.g. NF4 with its
// absmax values) that expands to float32 values. internal/quant.Tensor implements it.
type Packed interface {
	// Len returns the number of elements.
	Len() int
	// DequantizeRange writes the float32 values of elements [lo, hi) into dst[0:hi-lo]. It may
	// be called concurrently on disjoint ranges.
	DequantizeRange(dst []float32, lo, hi int)
	// Bytes returns the storage in bytes.
	Bytes() int64
}

// PackedStore is the optional capability of backends that keep frozen weights packed and
// expand them on the fly, so that a quantized base takes its packed size in memory (QLoRA).
// Callers find it with a type assertion,
//
//	ps, ok := b.(backend.PackedStore)
//
// A packed buffer is accepted where a BF16 one is (see WeightStore): the weight w of
// MatMulForward, MatMulForwardAcc and MatMulBackward (for dx only) and Download; the backend
// expands it into a reusable float32 scratch right before each product, so results are bitwise
// those of the same op on an F32 buffer holding the dequantized values. DTypeOf reports Quantized.
type PackedStore interface {
	// UploadPacked returns a new buffer that holds p (the backend may keep a reference to p,
	// which must not change afterwards).
	UploadPacked(p Packed) (Buffer, error)
	// PackedBytes returns the storage of a packed buffer in bytes, or 0 for another buffer.
	PackedBytes(b Buffer) int64
}
