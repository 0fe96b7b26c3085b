package kernels

import _ "embed"

// ElementwisePTX is elementwise.cu compiled by `go generate` (see the package comment).
//
//go:embed elementwise.ptx
var ElementwisePTX string

// AttentionPTX is attention.cu compiled by `go generate`.
//
//go:embed attention.ptx
var AttentionPTX string

// FlashPTX is flash.cu compiled by `go generate`.
//
//go:embed flash.ptx
var FlashPTX string
