package cpu

import "github.com/loractl/loractl/internal/backend/cpu/vec"

// actChunk is how many elements the activation loops take at a time: the exponentials of a
// chunk go to a stack array through vec.ExpSum, then a scalar loop finishes the function.
const actChunk = 256

// sigmoidChunk sets sig[i] = 1/(1 + exp(−g[i])) for len(g) ≤ actChunk elements.
func sigmoidChunk(sig *[actChunk]float32, g []float32) {
	e := sig[:len(g)]
	vec.ExpSum(e, g, 0, -1) // exp(−g)
	for i, v := range e {
		e[i] = 1 / (1 + v)
	}
}
