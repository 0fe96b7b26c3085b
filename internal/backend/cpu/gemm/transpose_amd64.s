//go:build amd64

#include "textflag.h"
#include "transpose8x8_amd64.h"

// func transpose8AVX2(dst *float32, ldd int, src *float32, lds int, kc8 int)
//
// dst[k*ldd + i] = src[i*lds + k] for i < 8, k < kc8 (a multiple of 8): eight rows of src
// become eight-float rows of dst.
TEXT ·transpose8AVX2(SB), NOSPLIT, $0-40
	MOVQ dst+0(FP), DI
	MOVQ ldd+8(FP), DX
	SHLQ $2, DX              // dst row stride, bytes
	MOVQ src+16(FP), SI
	MOVQ lds+24(FP), R9
	SHLQ $2, R9              // src row stride, bytes
	MOVQ kc8+32(FP), CX
	LEAQ (SI)(R9*4), R10     // row 4
	LEAQ (R9)(R9*2), R11     // 3 rows
t8loop:
	VMOVUPS (SI), Y0
	VMOVUPS (SI)(R9*1), Y1
	VMOVUPS (SI)(R9*2), Y2
	VMOVUPS (SI)(R11*1), Y3
	VMOVUPS (R10), Y4
	VMOVUPS (R10)(R9*1), Y5
	VMOVUPS (R10)(R9*2), Y6
	VMOVUPS (R10)(R11*1), Y7
	TRANSPOSE8X8
	VMOVUPS Y8, (DI)
	ADDQ DX, DI
	VMOVUPS Y9, (DI)
	ADDQ DX, DI
	VMOVUPS Y10, (DI)
	ADDQ DX, DI
	VMOVUPS Y11, (DI)
	ADDQ DX, DI
	VMOVUPS Y12, (DI)
	ADDQ DX, DI
	VMOVUPS Y13, (DI)
	ADDQ DX, DI
	VMOVUPS Y14, (DI)
	ADDQ DX, DI
	VMOVUPS Y15, (DI)
	ADDQ DX, DI
	ADDQ $32, SI
	ADDQ $32, R10
	SUBQ $8, CX
	JNZ t8loop
	VZEROUPPER
	RET

// func transpose6AVX2(dst *float32, src *float32, lds int, kc8 int)
//
// dst[k*6 + i] = src[i*lds + k] for i < 6, k < kc8 (a multiple of 8).
TEXT ·transpose6AVX2(SB), NOSPLIT, $0-32
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ lds+16(FP), R9
	SHLQ $2, R9
	MOVQ kc8+24(FP), CX
	LEAQ (SI)(R9*4), R10     // row 4
	LEAQ (R9)(R9*2), R11     // 3 rows
t6loop:
	VMOVUPS (SI), Y0
	VMOVUPS (SI)(R9*1), Y1
	VMOVUPS (SI)(R9*2), Y2
	VMOVUPS (SI)(R11*1), Y3
	VMOVUPS (R10), Y4
	VMOVUPS (R10)(R9*1), Y5
	VUNPCKLPS Y1, Y0, Y8     // 00 10 01 11 | 04 14 05 15
	VUNPCKHPS Y1, Y0, Y9     // 02 12 03 13 | 06 16 07 17
	VUNPCKLPS Y3, Y2, Y10
	VUNPCKHPS Y3, Y2, Y11
	VUNPCKLPS Y5, Y4, Y12    // 40 50 41 51 | 44 54 45 55
	VUNPCKHPS Y5, Y4, Y13    // 42 52 43 53 | 46 56 47 57
	VSHUFPS $0x44, Y10, Y8, Y0  // k0 | k4 (rows 0-3)
	VSHUFPS $0xee, Y10, Y8, Y1  // k1 | k5
	VSHUFPS $0x44, Y11, Y9, Y2  // k2 | k6
	VSHUFPS $0xee, Y11, Y9, Y3  // k3 | k7
	VMOVUPS X0, 0(DI)
	VMOVLPS X12, 16(DI)
	VMOVUPS X1, 24(DI)
	VMOVHPS X12, 40(DI)
	VMOVUPS X2, 48(DI)
	VMOVLPS X13, 64(DI)
	VMOVUPS X3, 72(DI)
	VMOVHPS X13, 88(DI)
	VEXTRACTF128 $1, Y0, X0
	VEXTRACTF128 $1, Y1, X1
	VEXTRACTF128 $1, Y2, X2
	VEXTRACTF128 $1, Y3, X3
	VEXTRACTF128 $1, Y12, X12
	VEXTRACTF128 $1, Y13, X13
	VMOVUPS X0, 96(DI)
	VMOVLPS X12, 112(DI)
	VMOVUPS X1, 120(DI)
	VMOVHPS X12, 136(DI)
	VMOVUPS X2, 144(DI)
	VMOVLPS X13, 160(DI)
	VMOVUPS X3, 168(DI)
	VMOVHPS X13, 184(DI)
	ADDQ $192, DI
	ADDQ $32, SI
	ADDQ $32, R10
	SUBQ $8, CX
	JNZ t6loop
	VZEROUPPER
	RET
