// A stand-in for the NVIDIA driver library (libcuda.so.1) with one device, for testing the
// probe's dlopen shim on machines without a GPU. Built by probe_cuda_test.go with gcc.
#include <stddef.h>
#include <string.h>

int cuDriverGetVersion(int *v) { *v = 12040; return 0; }
int cuInit(unsigned int flags) { return flags == 0 ? 0 : 1; }
int cuDeviceGetCount(int *n) { *n = 1; return 0; }
int cuDeviceGet(int *d, int i) { if (i != 0) return 101; *d = 0; return 0; }
int cuDeviceGetName(char *s, int n, int d) { strncpy(s, "Fake GPU 80GB", (size_t)n); return 0; }
int cuDeviceTotalMem_v2(size_t *b, int d) { *b = (size_t)80 << 30; return 0; }
int cuDeviceGetAttribute(int *v, int attr, int d) {
	*v = attr == 75 ? 9 : attr == 76 ? 0 : -1;
	return 0;
}
int cuGetErrorString(int rc, const char **s) { *s = "fake error"; return 0; }

// Memory: device pointers are host pointers from malloc. Allocations over 1 GiB fail with
// CUDA_ERROR_OUT_OF_MEMORY (2), so that the allocator's retry path can be tested.
#include <stdlib.h>
static long live_blocks;
static size_t live_bytes;
typedef unsigned long long dptr;
int cuDevicePrimaryCtxRetain(void **ctx, int d) { static int c; *ctx = &c; return d == 0 ? 0 : 101; }
int cuDevicePrimaryCtxRelease_v2(int d) { return 0; }
int cuCtxSetCurrent(void *ctx) { return 0; }
int cuCtxSynchronize(void) { return 0; }
int cuMemAlloc_v2(dptr *p, size_t n) {
	if (n > ((size_t)1 << 30)) return 2;
	void *m = malloc(n);
	if (m == NULL) return 2;
	*p = (dptr)(size_t)m;
	live_blocks++;
	live_bytes += n;
	return 0;
}
int cuMemFree_v2(dptr p) { free((void *)(size_t)p); live_blocks--; return 0; }
int cuMemcpyHtoD_v2(dptr d, const void *s, size_t n) { memcpy((void *)(size_t)d, s, n); return 0; }
int cuMemcpyDtoH_v2(void *d, dptr s, size_t n) { memcpy(d, (void *)(size_t)s, n); return 0; }
int cuMemcpyDtoD_v2(dptr d, dptr s, size_t n) { memmove((void *)(size_t)d, (void *)(size_t)s, n); return 0; }
int cuMemGetInfo_v2(size_t *f, size_t *t) { *t = (size_t)80 << 30; *f = *t - live_bytes; return 0; }

// Modules: any image loads; a function exists if the PTX text defines ".entry NAME(". Kernels
// cannot run here: cuLaunchKernel fails with CUDA_ERROR_NOT_SUPPORTED (801).
#include <stdio.h>
int cuMemsetD32_v2(dptr d, unsigned int v, size_t n) {
	unsigned int *p = (unsigned int *)(size_t)d;
	for (size_t i = 0; i < n; i++) p[i] = v;
	return 0;
}
int cuModuleLoadData(void **m, const void *image) { *m = (void *)image; return image == NULL ? 1 : 0; }
int cuModuleUnload(void *m) { return 0; }
int cuModuleGetFunction(void **f, void *m, const char *name) {
	char pat[300];
	snprintf(pat, sizeof pat, ".entry %s(", name);
	if (strstr((const char *)m, pat) == NULL) return 500; // CUDA_ERROR_NOT_FOUND
	*f = (void *)name;
	return 0;
}
int cuLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
	unsigned shmem, void *stream, void **params, void **extra) { return 801; }
