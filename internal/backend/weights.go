package backend

// WeightStore is the optional capability of backends that can keep frozen weights in a
// narrower dtype than float32, so that a model in bfloat16 takes half the memory. Callers find
// it with a type assertion,
//
//	ws, ok := b.(backend.WeightStore)
//
// A BF16 buffer holds bfloat16 bit patterns (the top 16 bits of a float32). Ops compute with the
// widened values, which is exact, and accumulate in float32; a backend says which ops accept a
// BF16 buffer and in which argument. On the CPU backend those are the weight w of MatMulForward
// and of MatMulBackward (for dx only: a BF16 weight is frozen and gets no gradient), the table
// of EmbeddingForward, and Download (which widens exactly); every other op panics when given a BF16 buffer, and Upload
// returns an error (use UploadBF16).
type WeightStore interface {
	// AllocWeight returns a zero-filled buffer of n elements stored as dt: F32 (the same as
	// Alloc) or BF16. Other dtypes are a programming error (the backend panics).
	AllocWeight(n int, dt DType) Buffer
	// UploadBF16 copies raw bfloat16 bits into a BF16 buffer; len(src) must equal dst.Len().
	UploadBF16(dst Buffer, src []uint16) error
	// DTypeOf reports how b is stored (F32 for buffers from Alloc).
	DTypeOf(b Buffer) DType
}
