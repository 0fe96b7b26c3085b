#include "textflag.h"

// Eight copies of a float32 constant (bits), 32 bytes, for memory operands of ymm instructions.
#define CONST8(name, bits) \
	DATA name<>+0(SB)/4, $bits \
	DATA name<>+4(SB)/4, $bits \
	DATA name<>+8(SB)/4, $bits \
	DATA name<>+12(SB)/4, $bits \
	DATA name<>+16(SB)/4, $bits \
	DATA name<>+20(SB)/4, $bits \
	DATA name<>+24(SB)/4, $bits \
	DATA name<>+28(SB)/4, $bits \
	GLOBL name<>(SB), RODATA|NOPTR, $32

CONST8(expHi, 0x42b00000)    // 88
CONST8(expLo, 0xc2ae0000)    // -87
CONST8(expLog2e, 0x3fb8aa3b) // log2(e)
CONST8(expC1, 0x3f318000)    // ln 2, high part
CONST8(expC2, 0xb95e8083)    // ln 2, low part (negative)
CONST8(expP0, 0x39506967)
CONST8(expP1, 0x3ab743ce)
CONST8(expP2, 0x3c088908)
CONST8(expP3, 0x3d2aa9c1)
CONST8(expP4, 0x3e2aaaaa)
CONST8(expP5, 0x3f000000)
CONST8(expOne, 0x3f800000)
CONST8(exp127, 0x0000007f)
CONST8(signBit, 0x80000000)

// EXP8 sets Y2 = exp(Y0) in eight lanes (the Cephes sequence of the package comment).
// In: Y0 (clobbered), Y12 = expLo, Y13 = expHi. Out: Y2. Clobbers Y1, Y3, Y7.
#define EXP8 \
	VCMPPS $5, Y12, Y0, Y7 /* !(x < lo): keep (NaN kept) */ \
	VMINPS Y0, Y13, Y0 /* min(hi, x), NaN stays */ \
	VMAXPS Y0, Y12, Y0 /* max(lo, x), NaN stays */ \
	VMULPS expLog2e<>(SB), Y0, Y1 \
	VROUNDPS $0, Y1, Y1 /* fx = round(x·log2 e) */ \
	VFNMADD231PS expC1<>(SB), Y1, Y0 /* x -= fx·c1 */ \
	VFNMADD231PS expC2<>(SB), Y1, Y0 /* x -= fx·c2 */ \
	VMOVUPS expP0<>(SB), Y2 \
	VFMADD213PS expP1<>(SB), Y0, Y2 \
	VFMADD213PS expP2<>(SB), Y0, Y2 \
	VFMADD213PS expP3<>(SB), Y0, Y2 \
	VFMADD213PS expP4<>(SB), Y0, Y2 \
	VFMADD213PS expP5<>(SB), Y0, Y2 \
	VMULPS Y0, Y0, Y3 \
	VFMADD213PS Y0, Y3, Y2 /* y = y·x² + x */ \
	VADDPS expOne<>(SB), Y2, Y2 \
	VCVTPS2DQ Y1, Y1 \
	VPADDD exp127<>(SB), Y1, Y1 \
	VPSLLD $23, Y1, Y1 /* 2^fx */ \
	VMULPS Y1, Y2, Y2 \
	VANDPS Y7, Y2, Y2 /* underflow → 0 */

// func maxAVX2(x *float32, n int) float32
TEXT ·maxAVX2(SB), NOSPLIT, $0-20
	MOVQ x+0(FP), SI
	MOVQ n+8(FP), CX
	VMOVUPS (SI), Y0          // running maximum
	VXORPS Y1, Y1, Y1         // NaN lanes seen
maxloop:
	VMOVUPS (SI), Y2
	VMAXPS Y2, Y0, Y0
	VCMPPS $3, Y2, Y2, Y3     // unordered: NaN
	VORPS Y3, Y1, Y1
	ADDQ $32, SI
	SUBQ $8, CX
	JNZ maxloop
	VMOVMSKPS Y1, AX
	TESTL AX, AX
	JNZ maxnan
	VEXTRACTF128 $1, Y0, X2
	VMAXPS X2, X0, X0
	VPERMILPS $0x4e, X0, X2
	VMAXPS X2, X0, X0
	VPERMILPS $0xb1, X0, X2
	VMAXPS X2, X0, X0
	VMOVSS X0, ret+16(FP)
	VZEROUPPER
	RET
maxnan:
	MOVL $0x7fc00000, AX
	MOVL AX, ret+16(FP)
	VZEROUPPER
	RET

// func expSumAVX2(dst, x *float32, n int, shift, scale float32) float64
//
// dst[i] = exp((x[i]-shift)*scale); returns the sum in float64 (two 4-lane accumulators).
TEXT ·expSumAVX2(SB), NOSPLIT, $0-40
	MOVQ dst+0(FP), DI
	MOVQ x+8(FP), SI
	MOVQ n+16(FP), CX
	VBROADCASTSS shift+24(FP), Y14
	VBROADCASTSS scale+28(FP), Y15
	VMOVUPS expHi<>(SB), Y13
	VMOVUPS expLo<>(SB), Y12
	VXORPD Y11, Y11, Y11
	VXORPD Y10, Y10, Y10
exploop:
	VMOVUPS (SI), Y0
	VSUBPS Y14, Y0, Y0        // x - shift
	VMULPS Y15, Y0, Y0        // ·scale
	EXP8
	VMOVUPS Y2, (DI)
	VCVTPS2PD X2, Y3
	VEXTRACTF128 $1, Y2, X4
	VCVTPS2PD X4, Y4
	VADDPD Y3, Y11, Y11
	VADDPD Y4, Y10, Y10
	ADDQ $32, SI
	ADDQ $32, DI
	SUBQ $8, CX
	JNZ exploop
	VADDPD Y10, Y11, Y11
	VEXTRACTF128 $1, Y11, X0
	VADDPD X0, X11, X0
	VHADDPD X0, X0, X0
	VMOVSD X0, ret+32(FP)
	VZEROUPPER
	RET

// func dotAVX2(a, b *float32, n int) float32
TEXT ·dotAVX2(SB), NOSPLIT, $0-28
	MOVQ a+0(FP), SI
	MOVQ b+8(FP), DI
	MOVQ n+16(FP), CX
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	CMPQ CX, $16
	JLT dottail
dotloop:
	VMOVUPS (SI), Y2
	VMOVUPS 32(SI), Y3
	VFMADD231PS (DI), Y2, Y0
	VFMADD231PS 32(DI), Y3, Y1
	ADDQ $64, SI
	ADDQ $64, DI
	SUBQ $16, CX
	CMPQ CX, $16
	JGE dotloop
dottail:
	TESTQ CX, CX
	JZ dotdone
	VMOVUPS (SI), Y2
	VFMADD231PS (DI), Y2, Y0
dotdone:
	VADDPS Y1, Y0, Y0
	VEXTRACTF128 $1, Y0, X1
	VADDPS X1, X0, X0
	VHADDPS X0, X0, X0
	VHADDPS X0, X0, X0
	VMOVSS X0, ret+24(FP)
	VZEROUPPER
	RET

// func axpyAVX2(y, x *float32, n int, a float32)
TEXT ·axpyAVX2(SB), NOSPLIT, $0-28
	MOVQ y+0(FP), DI
	MOVQ x+8(FP), SI
	MOVQ n+16(FP), CX
	VBROADCASTSS a+24(FP), Y15
axpyloop:
	VMOVUPS (DI), Y0
	VFMADD231PS (SI), Y15, Y0
	VMOVUPS Y0, (DI)
	ADDQ $32, SI
	ADDQ $32, DI
	SUBQ $8, CX
	JNZ axpyloop
	VZEROUPPER
	RET

// func scaleAVX2(x *float32, n int, a float32)
TEXT ·scaleAVX2(SB), NOSPLIT, $0-20
	MOVQ x+0(FP), DI
	MOVQ n+8(FP), CX
	VBROADCASTSS a+16(FP), Y15
scaleloop:
	VMULPS (DI), Y15, Y0
	VMOVUPS Y0, (DI)
	ADDQ $32, DI
	SUBQ $8, CX
	JNZ scaleloop
	VZEROUPPER
	RET

// SIGMOID8 sets Y2 = 1/(1 + exp(−Y8)) in eight lanes, with a true division.
// In: Y8 = g (kept), Y9 = 1, Y10 = sign bits, Y12/Y13 as EXP8. Out: Y2. Clobbers Y0, Y1, Y3, Y7.
#define SIGMOID8 \
	VXORPS Y10, Y8, Y0 /* −g */ \
	EXP8 \
	VADDPS Y9, Y2, Y2 \
	VDIVPS Y2, Y9, Y2 /* s = 1/(1 + e) */

// func swigluAVX2(out, gate, up *float32, n int)
//
// out[i] = (gate[i]·s)·up[i], s = 1/(1 + exp(−gate[i])). out may alias gate or up.
// (The arguments are not named g: that is the goroutine register in Go assembly.)
TEXT ·swigluAVX2(SB), NOSPLIT, $0-32
	MOVQ out+0(FP), DI
	MOVQ gate+8(FP), SI
	MOVQ up+16(FP), DX
	MOVQ n+24(FP), CX
	XORQ BX, BX
	VMOVUPS expOne<>(SB), Y9
	VMOVUPS signBit<>(SB), Y10
	VMOVUPS expLo<>(SB), Y12
	VMOVUPS expHi<>(SB), Y13
swigluloop:
	VMOVUPS (SI)(BX*4), Y8
	SIGMOID8
	VMULPS Y8, Y2, Y2         // g·s
	VMULPS (DX)(BX*4), Y2, Y2 // ·u
	VMOVUPS Y2, (DI)(BX*4)
	ADDQ $8, BX
	CMPQ BX, CX
	JLT swigluloop
	VZEROUPPER
	RET

// func swigluBwdAVX2(dg, du, dout, gate, up *float32, n int)
//
// With g = gate[i], s = 1/(1 + exp(−g)): dg[i] += (dout[i]·up[i])·(s·(1 + g·(1 − s))) unless dg
// is nil, du[i] += dout[i]·(g·s) unless du is nil. Each product rounded on its own (no FMA), as the
// Go twin computes it.
TEXT ·swigluBwdAVX2(SB), NOSPLIT, $0-48
	MOVQ dg+0(FP), DI
	MOVQ du+8(FP), R8
	MOVQ dout+16(FP), R9
	MOVQ gate+24(FP), SI
	MOVQ up+32(FP), DX
	MOVQ n+40(FP), CX
	XORQ BX, BX
	VMOVUPS expOne<>(SB), Y9
	VMOVUPS signBit<>(SB), Y10
	VMOVUPS expLo<>(SB), Y12
	VMOVUPS expHi<>(SB), Y13
swiglubwdloop:
	VMOVUPS (SI)(BX*4), Y8
	VMOVUPS (R9)(BX*4), Y4    // dout
	SIGMOID8
	TESTQ DI, DI
	JZ swiglubwddu
	VMULPS (DX)(BX*4), Y4, Y5 // dout·u
	VSUBPS Y2, Y9, Y6         // 1 − s
	VMULPS Y8, Y6, Y6         // g·(1 − s)
	VADDPS Y9, Y6, Y6         // 1 + g·(1 − s)
	VMULPS Y2, Y6, Y6         // s·(1 + g·(1 − s))
	VMULPS Y6, Y5, Y5
	VADDPS (DI)(BX*4), Y5, Y5
	VMOVUPS Y5, (DI)(BX*4)
swiglubwddu:
	TESTQ R8, R8
	JZ swiglubwdnext
	VMULPS Y8, Y2, Y6         // g·s
	VMULPS Y6, Y4, Y6         // dout·(g·s)
	VADDPS (R8)(BX*4), Y6, Y6
	VMOVUPS Y6, (R8)(BX*4)
swiglubwdnext:
	ADDQ $8, BX
	CMPQ BX, CX
	JLT swiglubwdloop
	VZEROUPPER
	RET
