package vec

import "golang.org/x/sys/cpu"

func hasAsm() bool { return cpu.X86.HasAVX2 && cpu.X86.HasFMA }

// The assembly routines take n > 0, a multiple of 8.

//go:noescape
func maxAVX2(x *float32, n int) float32

//go:noescape
func expSumAVX2(dst, x *float32, n int, shift, scale float32) float64

//go:noescape
func dotAVX2(a, b *float32, n int) float32

//go:noescape
func axpyAVX2(y, x *float32, n int, a float32)

//go:noescape
func scaleAVX2(x *float32, n int, a float32)

//go:noescape
func swigluAVX2(out, gate, up *float32, n int)

// swigluBwdAVX2 takes dg or du nil to skip that output.
//
//go:noescape
func swigluBwdAVX2(dg, du, dout, gate, up *float32, n int)
