//go:build amd64

#include "textflag.h"
#include "transpose8x8_amd64.h"

// bfloat16 → float32 widening with AVX2: VPMOVZXWD zero-extends 8 words to 8 dwords, VPSLLD $16
// moves each into the top half. Exact, so the packed panels hold the same bits as a float32
// operand would.

// func widenRowsAVX2(d *float32, ldd int, h *uint16, lds int, rows, cols8 int)
// For r < rows, c < cols8: d[r*ldd + c] = widen(h[r*lds + c]). cols8 is a positive multiple of 8.
TEXT ·widenRowsAVX2(SB), NOSPLIT, $0-48
	MOVQ d+0(FP), DI
	MOVQ ldd+8(FP), R8
	SHLQ $2, R8
	MOVQ h+16(FP), SI
	MOVQ lds+24(FP), R9
	SHLQ $1, R9
	MOVQ rows+32(FP), CX
	MOVQ cols8+40(FP), DX
	TESTQ CX, CX
	JZ wdone

wrow:
	MOVQ DI, R10
	MOVQ SI, R11
	MOVQ DX, BX
	CMPQ BX, $32
	JB wtail

wloop32:
	VPMOVZXWD 0(R11), Y0
	VPMOVZXWD 16(R11), Y1
	VPMOVZXWD 32(R11), Y2
	VPMOVZXWD 48(R11), Y3
	VPSLLD $16, Y0, Y0
	VPSLLD $16, Y1, Y1
	VPSLLD $16, Y2, Y2
	VPSLLD $16, Y3, Y3
	VMOVUPS Y0, 0(R10)
	VMOVUPS Y1, 32(R10)
	VMOVUPS Y2, 64(R10)
	VMOVUPS Y3, 96(R10)
	ADDQ $64, R11
	ADDQ $128, R10
	SUBQ $32, BX
	CMPQ BX, $32
	JAE wloop32

wtail:
	TESTQ BX, BX
	JZ wnext

wloop8:
	VPMOVZXWD 0(R11), Y0
	VPSLLD $16, Y0, Y0
	VMOVUPS Y0, 0(R10)
	ADDQ $16, R11
	ADDQ $32, R10
	SUBQ $8, BX
	JNZ wloop8

wnext:
	ADDQ R8, DI
	ADDQ R9, SI
	DECQ CX
	JNZ wrow

wdone:
	VZEROUPPER
	RET

// func transposeWiden8AVX2(d *float32, ldd int, h *uint16, lds int, kc8 int)
// For i < 8, k < kc8: d[k*ldd + i] = widen(h[i*lds + k]). kc8 is a positive multiple of 8.
// Each step loads 8 k of the 8 streams, widens them and transposes the 8×8 block in registers
// (unpack, shuffle, then swap 128-bit lanes), then stores 8 rows of 8 floats.
TEXT ·transposeWiden8AVX2(SB), NOSPLIT, $0-40
	MOVQ d+0(FP), DI
	MOVQ ldd+8(FP), R8
	SHLQ $2, R8             // R8 = ldd in bytes
	MOVQ h+16(FP), SI       // stream 0
	MOVQ lds+24(FP), R9
	SHLQ $1, R9             // R9 = lds in bytes
	MOVQ kc8+32(FP), CX
	SHRQ $3, CX
	JZ tdone
	LEAQ (R9)(R9*2), R11    // 3·lds
	LEAQ (SI)(R9*4), R10    // stream 4
	LEAQ (R8)(R8*2), R12    // 3·ldd
	LEAQ (DI)(R8*4), R13    // output row 4
	MOVQ R8, R14
	SHLQ $3, R14            // 8·ldd

tloop:
	VPMOVZXWD (SI), Y0
	VPMOVZXWD (SI)(R9*1), Y1
	VPMOVZXWD (SI)(R9*2), Y2
	VPMOVZXWD (SI)(R11*1), Y3
	VPMOVZXWD (R10), Y4
	VPMOVZXWD (R10)(R9*1), Y5
	VPMOVZXWD (R10)(R9*2), Y6
	VPMOVZXWD (R10)(R11*1), Y7
	VPSLLD $16, Y0, Y0
	VPSLLD $16, Y1, Y1
	VPSLLD $16, Y2, Y2
	VPSLLD $16, Y3, Y3
	VPSLLD $16, Y4, Y4
	VPSLLD $16, Y5, Y5
	VPSLLD $16, Y6, Y6
	VPSLLD $16, Y7, Y7

	// The widened 8×8 block, transposed: one output row (one k) per register.
	TRANSPOSE8X8

	VMOVUPS Y8, (DI)
	VMOVUPS Y9, (DI)(R8*1)
	VMOVUPS Y10, (DI)(R8*2)
	VMOVUPS Y11, (DI)(R12*1)
	VMOVUPS Y12, (R13)
	VMOVUPS Y13, (R13)(R8*1)
	VMOVUPS Y14, (R13)(R8*2)
	VMOVUPS Y15, (R13)(R12*1)

	ADDQ $16, SI
	ADDQ $16, R10
	ADDQ R14, DI
	ADDQ R14, R13
	DECQ CX
	JNZ tloop

tdone:
	VZEROUPPER
	RET
