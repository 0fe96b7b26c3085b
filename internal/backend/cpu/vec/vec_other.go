//go:build !amd64

package vec

func hasAsm() bool { return false }

func maxAVX2(x *float32, n int) float32                               { panic("vec: no assembly") }
func expSumAVX2(dst, x *float32, n int, shift, scale float32) float64 { panic("vec: no assembly") }
func dotAVX2(a, b *float32, n int) float32                            { panic("vec: no assembly") }
func axpyAVX2(y, x *float32, n int, a float32)                        { panic("vec: no assembly") }
func scaleAVX2(x *float32, n int, a float32)                          { panic("vec: no assembly") }
func swigluAVX2(out, gate, up *float32, n int)                        { panic("vec: no assembly") }
func swigluBwdAVX2(dg, du, dout, gate, up *float32, n int)            { panic("vec: no assembly") }
