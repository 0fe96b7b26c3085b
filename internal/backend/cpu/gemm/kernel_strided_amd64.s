//go:build amd64

#include "textflag.h"
#include "kernel6x16_amd64.h"

// KSTEPS does one k step of the strided 6×16 kernel: b row k (16 floats at BX) times a column
// k (6 floats: rows at AX, AX+R9, AX+2·R9, R10, R10+R9, R10+2·R9), then steps every pointer to
// k+1. The fused multiply-adds are those of KSTEP6, in the same order.
#define KSTEPS \
	VMOVUPS (BX), Y12; \
	VMOVUPS 32(BX), Y13; \
	VBROADCASTSS (AX), Y14; \
	VFMADD231PS Y12, Y14, Y0; \
	VFMADD231PS Y13, Y14, Y1; \
	VBROADCASTSS (AX)(R9*1), Y15; \
	VFMADD231PS Y12, Y15, Y2; \
	VFMADD231PS Y13, Y15, Y3; \
	VBROADCASTSS (AX)(R9*2), Y14; \
	VFMADD231PS Y12, Y14, Y4; \
	VFMADD231PS Y13, Y14, Y5; \
	VBROADCASTSS (R10), Y15; \
	VFMADD231PS Y12, Y15, Y6; \
	VFMADD231PS Y13, Y15, Y7; \
	VBROADCASTSS (R10)(R9*1), Y14; \
	VFMADD231PS Y12, Y14, Y8; \
	VFMADD231PS Y13, Y14, Y9; \
	VBROADCASTSS (R10)(R9*2), Y15; \
	VFMADD231PS Y12, Y15, Y10; \
	VFMADD231PS Y13, Y15, Y11; \
	ADDQ R11, AX; \
	ADDQ R11, R10; \
	ADDQ R12, BX

// func kern6x16AVX2s(kc int, a *float32, rsa, csa int, b *float32, ldb int, c *float32, ldc int, acc int)
//
// The 6×16 kernel over strided operands: A element (i, k) at a[i·rsa + k·csa], B row k at
// b[k·ldb:], 16 contiguous floats. With rsa = 1, csa = 6, ldb = 16 it reads packed panels like
// kern6x16AVX2; with rsa = lda, csa = 1 it reads a row-major A in place, with ldb = the row
// stride a row-major B in place.
TEXT ·kern6x16AVX2s(SB), NOSPLIT, $0-72
	MOVQ kc+0(FP), CX
	MOVQ a+8(FP), AX
	MOVQ rsa+16(FP), R9
	SHLQ $2, R9
	MOVQ csa+24(FP), R11
	SHLQ $2, R11
	MOVQ b+32(FP), BX
	MOVQ ldb+40(FP), R12
	SHLQ $2, R12
	MOVQ c+48(FP), DI
	MOVQ ldc+56(FP), DX
	SHLQ $2, DX
	LEAQ (R9)(R9*2), R10
	ADDQ AX, R10            // row 3
	ZERO6X16
	MOVQ CX, R8
	SHRQ $2, R8
	JZ stail
sloop4:
	KSTEPS
	KSTEPS
	KSTEPS
	KSTEPS
	DECQ R8
	JNZ sloop4
stail:
	ANDQ $3, CX
	JZ sstore
sloop1:
	KSTEPS
	DECQ CX
	JNZ sloop1
sstore:
	MOVQ acc+64(FP), R8
	TESTQ R8, R8
	JNZ saccum
	STORE6X16
	VZEROUPPER
	RET
saccum:
	ACCUM6X16
	VZEROUPPER
	RET
