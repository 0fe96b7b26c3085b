// Shared by the 6×16 kernels (kernel_amd64.s, kernel_strided_amd64.s): clearing the tile held
// in Y0–Y11 (two ymm per row) and writing it to C at DI, row stride DX bytes.

// ZERO6X16 clears the tile's accumulators before the k loop.
#define ZERO6X16 \
	VXORPS Y0, Y0, Y0; \
	VXORPS Y1, Y1, Y1; \
	VXORPS Y2, Y2, Y2; \
	VXORPS Y3, Y3, Y3; \
	VXORPS Y4, Y4, Y4; \
	VXORPS Y5, Y5, Y5; \
	VXORPS Y6, Y6, Y6; \
	VXORPS Y7, Y7, Y7; \
	VXORPS Y8, Y8, Y8; \
	VXORPS Y9, Y9, Y9; \
	VXORPS Y10, Y10, Y10; \
	VXORPS Y11, Y11, Y11

// STORE6X16 stores the tile (C = tile).
#define STORE6X16 \
	VMOVUPS Y0, 0(DI); \
	VMOVUPS Y1, 32(DI); \
	ADDQ DX, DI; \
	VMOVUPS Y2, 0(DI); \
	VMOVUPS Y3, 32(DI); \
	ADDQ DX, DI; \
	VMOVUPS Y4, 0(DI); \
	VMOVUPS Y5, 32(DI); \
	ADDQ DX, DI; \
	VMOVUPS Y6, 0(DI); \
	VMOVUPS Y7, 32(DI); \
	ADDQ DX, DI; \
	VMOVUPS Y8, 0(DI); \
	VMOVUPS Y9, 32(DI); \
	ADDQ DX, DI; \
	VMOVUPS Y10, 0(DI); \
	VMOVUPS Y11, 32(DI)

// ACCUM6X16 adds the tile to C (C += tile), reading each row before writing it.
#define ACCUM6X16 \
	VADDPS 0(DI), Y0, Y0; \
	VMOVUPS Y0, 0(DI); \
	VADDPS 32(DI), Y1, Y1; \
	VMOVUPS Y1, 32(DI); \
	ADDQ DX, DI; \
	VADDPS 0(DI), Y2, Y2; \
	VMOVUPS Y2, 0(DI); \
	VADDPS 32(DI), Y3, Y3; \
	VMOVUPS Y3, 32(DI); \
	ADDQ DX, DI; \
	VADDPS 0(DI), Y4, Y4; \
	VMOVUPS Y4, 0(DI); \
	VADDPS 32(DI), Y5, Y5; \
	VMOVUPS Y5, 32(DI); \
	ADDQ DX, DI; \
	VADDPS 0(DI), Y6, Y6; \
	VMOVUPS Y6, 0(DI); \
	VADDPS 32(DI), Y7, Y7; \
	VMOVUPS Y7, 32(DI); \
	ADDQ DX, DI; \
	VADDPS 0(DI), Y8, Y8; \
	VMOVUPS Y8, 0(DI); \
	VADDPS 32(DI), Y9, Y9; \
	VMOVUPS Y9, 32(DI); \
	ADDQ DX, DI; \
	VADDPS 0(DI), Y10, Y10; \
	VMOVUPS Y10, 0(DI); \
	VADDPS 32(DI), Y11, Y11; \
	VMOVUPS Y11, 32(DI)
