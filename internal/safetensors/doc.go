// Package safetensors reads and writes the safetensors tensor format
// (https://github.com/huggingface/safetensors) used by Hugging Face checkpoints.
//
// # Format
//
// A file is
//
//	[8 bytes]  N, the header length, unsigned little-endian
//	[N bytes]  header: a UTF-8 JSON object, usually padded with spaces to a multiple of 8
//	[rest]     data section: the tensors' raw little-endian bytes, row-major
//
// The header maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]},
// offsets relative to the start of the data section. The optional key "__metadata__"
// maps to a string→string object (e.g. {"format": "pt"}).
//
// A sharded checkpoint is a directory with model.safetensors.index.json, whose
// "weight_map" maps each tensor name to the shard file holding it.
//
// # Validation
//
// Files are memory-mapped (zero-copy, pages read lazily), and the header is checked
// strictly before any tensor is handed out:
//   - N ≤ MaxHeaderSize (100,000,000 bytes) and N ≤ file size − 8;
//   - the header is valid UTF-8 JSON, starts with '{', is an object, and only spaces
//     (JSON whitespace) follow it; duplicate keys anywhere are an error;
//   - every entry has exactly dtype, shape and data_offsets; the dtype is one of BOOL,
//     U8, I8, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64, F8_E4M3, F8_E5M2;
//     dimensions and offsets are non-negative integers; product(shape) × dtype size
//     equals end − begin (computed without overflow);
//   - the tensors, sorted by offset, tile the data section exactly: the first begins at
//     0, each begins where the previous ends (no overlap, no gap), the last ends at the
//     end of the file;
//   - "__metadata__" holds strings only.
//
// For a sharded checkpoint every shard must exist and validate, every tensor of the
// weight_map must be in the shard it names, and no tensor may be in two shards or in a
// shard without being listed.
//
// # Writing
//
// Write lays tensors out by dtype size (largest first) then name, pads the header with
// spaces to a multiple of 8 bytes (so every tensor is aligned to its element size),
// writes a temporary file in the destination directory, fsyncs it, renames it into place
// and fsyncs the directory: the destination is never half-written.
//
// # Conversions
//
// DecodeFloat32 and EncodeFloat32 convert between float32 and F32, F64, F16, BF16,
// F8_E4M3 (torch's float8_e4m3fn: no infinities, NaN = 0x7f/0xff, max 448) and F8_E5M2.
// Narrowing rounds to nearest, ties to even; NaN stays NaN.
package safetensors
