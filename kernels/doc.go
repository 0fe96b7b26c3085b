// Package kernels holds loractl's CUDA kernels: the .cu sources and the PTX that
// `go generate ./kernels` compiles from them with nvcc for compute_80 (Ampere and newer). The
// PTX is committed, so no build needs nvcc; the -tags cuda backend embeds it (ptx.go) and the
// driver JIT-compiles it for the GPU it runs on.
//
// Regenerate after editing a .cu file (nvcc 11.8 from ../shared/tools/install-nvcc.sh is
// enough: the kernels use no sm_90-only feature; cuBLAS does the large products):
//
//	go generate ./kernels
package kernels

//go:generate nvcc -ptx -arch=compute_80 -O3 -o elementwise.ptx elementwise.cu
//go:generate nvcc -ptx -arch=compute_80 -O3 -o attention.ptx attention.cu
//go:generate nvcc -ptx -arch=compute_80 -O3 -o flash.ptx flash.cu

// Module is one compiled .cu file: its PTX and the kernels it defines.
type Module struct {
	Name    string   // the .cu file's base name
	PTX     string   // its PTX (embedded from the committed .ptx file)
	Entries []string // the kernels it defines
}

// Modules lists every module, each kernel the twin of a CPU backend op.
var Modules = []Module{
	{"elementwise", ElementwisePTX, []string{
		"rmsnorm_forward", "rmsnorm_backward_rows", "rmsnorm_backward_dw",
		"swiglu_forward", "swiglu_backward", "rope_pos",
		"embedding_forward", "embedding_forward_bf16", "add_forward", "axpy", "scale",
		"cast_f32_bf16", "cast_bf16_f32", "cross_entropy", "adamw",
	}},
	{"attention", AttentionPTX, []string{"attention_forward", "add_bias", "attention_train_forward",
		"attention_backward_q", "attention_backward_kv", "embedding_backward", "bias_backward",
		"col_scale", "col_scale_backward"}},
	{"flash", FlashPTX, []string{"flash_attention_forward", "flash_attention_backward_q", "flash_attention_backward_kv"}},
}
