package kernels

import _ "embed"

// ElementwisePTX is elementwise.cu compiled by `go generate` (see the package comment).
//
//go:embed elementwise.ptx
var ElementwisePTX string
