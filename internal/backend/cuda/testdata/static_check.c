// Checks the shim's own prototypes and constants (driver_cuda.go) against the
// real CUDA headers, where they are installed: compiled with gcc -fsyntax-only -Werror by
// TestShimMatchesHeaders. A mismatch is a compile error.
#include <stddef.h>
#include <cuda.h>

typedef int lcd_result;
typedef int lcd_device;
typedef unsigned long long lcd_dptr;
typedef void *lcd_ctx;

_Static_assert(sizeof(CUresult) == sizeof(lcd_result), "CUresult is an int");
_Static_assert(sizeof(CUdevice) == sizeof(lcd_device), "CUdevice is an int");
_Static_assert(sizeof(CUdeviceptr) == sizeof(lcd_dptr), "CUdeviceptr is 64-bit");
_Static_assert(sizeof(CUcontext) == sizeof(lcd_ctx), "CUcontext is a pointer");
_Static_assert(CUDA_SUCCESS == 0, "CUDA_SUCCESS");
_Static_assert(CUDA_ERROR_OUT_OF_MEMORY == 2, "ErrOutOfMemory in driver_cuda.go");
_Static_assert(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR == 75, "LC_ATTR_CC_MAJOR");
_Static_assert(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR == 76, "LC_ATTR_CC_MINOR");

// The entry points, by the names the shim dlsyms, with the shim's types.
CUresult (*const p_init)(unsigned int) = cuInit;
CUresult (*const p_ver)(int *) = cuDriverGetVersion;
CUresult (*const p_count)(int *) = cuDeviceGetCount;
CUresult (*const p_get)(CUdevice *, int) = cuDeviceGet;
CUresult (*const p_name)(char *, int, CUdevice) = cuDeviceGetName;
CUresult (*const p_mem)(size_t *, CUdevice) = cuDeviceTotalMem_v2;
CUresult (*const p_attr)(int *, CUdevice_attribute, CUdevice) = cuDeviceGetAttribute;
CUresult (*const p_err)(CUresult, const char **) = cuGetErrorString;
CUresult (*const p_retain)(CUcontext *, CUdevice) = cuDevicePrimaryCtxRetain;
CUresult (*const p_release)(CUdevice) = cuDevicePrimaryCtxRelease_v2;
CUresult (*const p_setcur)(CUcontext) = cuCtxSetCurrent;
CUresult (*const p_sync)(void) = cuCtxSynchronize;
CUresult (*const p_alloc)(CUdeviceptr *, size_t) = cuMemAlloc_v2;
CUresult (*const p_free)(CUdeviceptr) = cuMemFree_v2;
CUresult (*const p_htod)(CUdeviceptr, const void *, size_t) = cuMemcpyHtoD_v2;
CUresult (*const p_dtoh)(void *, CUdeviceptr, size_t) = cuMemcpyDtoH_v2;
CUresult (*const p_dtod)(CUdeviceptr, CUdeviceptr, size_t) = cuMemcpyDtoD_v2;
CUresult (*const p_info)(size_t *, size_t *) = cuMemGetInfo_v2;
