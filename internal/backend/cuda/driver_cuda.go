//go:build cuda

package cuda

/*
#cgo LDFLAGS: -ldl
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/syscall.h>

// Our prototypes of the driver API calls the backend uses (CUDA driver API; the _v2 entry
// points are the 64-bit ones every driver since CUDA 3.2 exports). CUresult and CUdevice are
// ints, CUdeviceptr is an unsigned 64-bit integer, contexts are opaque pointers.
typedef int lcd_result;
typedef int lcd_device;
typedef unsigned long long lcd_dptr;
typedef void *lcd_ctx;
typedef void *lcd_module;
typedef void *lcd_function;

static struct {
	void *h;
	lcd_result (*init)(unsigned int);
	lcd_result (*driverGetVersion)(int *);
	lcd_result (*deviceGetCount)(int *);
	lcd_result (*deviceGetName)(char *, int, lcd_device);
	lcd_result (*deviceTotalMem)(size_t *, lcd_device);
	lcd_result (*deviceGetAttribute)(int *, int, lcd_device);
	lcd_result (*deviceGet)(lcd_device *, int);
	lcd_result (*primaryCtxRetain)(lcd_ctx *, lcd_device);
	lcd_result (*primaryCtxRelease)(lcd_device);
	lcd_result (*ctxSetCurrent)(lcd_ctx);
	lcd_result (*ctxSynchronize)(void);
	lcd_result (*memAlloc)(lcd_dptr *, size_t);
	lcd_result (*memFree)(lcd_dptr);
	lcd_result (*memcpyHtoD)(lcd_dptr, const void *, size_t);
	lcd_result (*memcpyDtoH)(void *, lcd_dptr, size_t);
	lcd_result (*memcpyDtoD)(lcd_dptr, lcd_dptr, size_t);
	lcd_result (*memGetInfo)(size_t *, size_t *);
	lcd_result (*getErrorString)(lcd_result, const char **);
	lcd_result (*memsetD32)(lcd_dptr, unsigned int, size_t);
	lcd_result (*moduleLoadData)(lcd_module *, const void *);
	lcd_result (*moduleUnload)(lcd_module);
	lcd_result (*moduleGetFunction)(lcd_function *, lcd_module, const char *);
	lcd_result (*launchKernel)(lcd_function, unsigned int, unsigned int, unsigned int, unsigned int,
		unsigned int, unsigned int, unsigned int, void *, void **, void **);
} lcd;

// lcd_load dlopens libcuda.so.1 and resolves every entry point; it returns the name of the
// first one missing, "" on success, or "libcuda.so.1" when the library itself is missing.
static char lcd_dlerr[256];
static const char *lcd_load(void) {
	if (lcd.h != NULL) return "";
	void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
	if (h == NULL) {
		const char *e = dlerror();
		snprintf(lcd_dlerr, sizeof lcd_dlerr, "%s", e != NULL ? e : "not found");
		return "libcuda.so.1";
	}
#define LCD_SYM(field, name) if ((*(void **)&lcd.field = dlsym(h, name)) == NULL) return name;
	LCD_SYM(init, "cuInit")
	LCD_SYM(driverGetVersion, "cuDriverGetVersion")
	LCD_SYM(deviceGetCount, "cuDeviceGetCount")
	LCD_SYM(deviceGetName, "cuDeviceGetName")
	LCD_SYM(deviceTotalMem, "cuDeviceTotalMem_v2")
	LCD_SYM(deviceGetAttribute, "cuDeviceGetAttribute")
	LCD_SYM(deviceGet, "cuDeviceGet")
	LCD_SYM(primaryCtxRetain, "cuDevicePrimaryCtxRetain")
	if ((*(void **)&lcd.primaryCtxRelease = dlsym(h, "cuDevicePrimaryCtxRelease_v2")) == NULL) {
		LCD_SYM(primaryCtxRelease, "cuDevicePrimaryCtxRelease")
	}
	LCD_SYM(ctxSetCurrent, "cuCtxSetCurrent")
	LCD_SYM(ctxSynchronize, "cuCtxSynchronize")
	LCD_SYM(memAlloc, "cuMemAlloc_v2")
	LCD_SYM(memFree, "cuMemFree_v2")
	LCD_SYM(memcpyHtoD, "cuMemcpyHtoD_v2")
	LCD_SYM(memcpyDtoH, "cuMemcpyDtoH_v2")
	LCD_SYM(memcpyDtoD, "cuMemcpyDtoD_v2")
	LCD_SYM(memGetInfo, "cuMemGetInfo_v2")
	LCD_SYM(getErrorString, "cuGetErrorString")
	LCD_SYM(memsetD32, "cuMemsetD32_v2")
	LCD_SYM(moduleLoadData, "cuModuleLoadData")
	LCD_SYM(moduleUnload, "cuModuleUnload")
	LCD_SYM(moduleGetFunction, "cuModuleGetFunction")
	LCD_SYM(launchKernel, "cuLaunchKernel")
#undef LCD_SYM
	lcd.h = h;
	return "";
}

static lcd_result lcd_init(void) { return lcd.init(0); }
static const char *lcd_dlerror(void) { return lcd_dlerr; }
static lcd_result lcd_version(int *v) { return lcd.driverGetVersion(v); }
static lcd_result lcd_count(int *n) { return lcd.deviceGetCount(n); }

// lcd_describe fills one device's name, memory and compute capability (attributes 75, 76).
static lcd_result lcd_describe(int ordinal, char *name, int cap, size_t *mem, int *major, int *minor) {
	lcd_device d;
	lcd_result rc = lcd.deviceGet(&d, ordinal);
	if (rc == 0) rc = lcd.deviceGetName(name, cap, d);
	if (rc == 0) rc = lcd.deviceTotalMem(mem, d);
	if (rc == 0) rc = lcd.deviceGetAttribute(major, 75, d);
	if (rc == 0) rc = lcd.deviceGetAttribute(minor, 76, d);
	return rc;
}
static lcd_result lcd_retain(int ordinal, lcd_ctx *ctx, lcd_device *dev) {
	lcd_result rc = lcd.deviceGet(dev, ordinal);
	if (rc != 0) return rc;
	rc = lcd.primaryCtxRetain(ctx, *dev);
	if (rc != 0) return rc;
	return lcd.ctxSetCurrent(*ctx);
}
static lcd_result lcd_release(lcd_device dev) { return lcd.primaryCtxRelease(dev); }
static lcd_result lcd_sync(void) { return lcd.ctxSynchronize(); }
static lcd_result lcd_alloc(lcd_dptr *p, size_t n) { return lcd.memAlloc(p, n); }
static lcd_result lcd_free(lcd_dptr p) { return lcd.memFree(p); }
static lcd_result lcd_htod(lcd_dptr d, const void *s, size_t n) { return lcd.memcpyHtoD(d, s, n); }
static lcd_result lcd_dtoh(void *d, lcd_dptr s, size_t n) { return lcd.memcpyDtoH(d, s, n); }
static lcd_result lcd_dtod(lcd_dptr d, lcd_dptr s, size_t n) { return lcd.memcpyDtoD(d, s, n); }
static lcd_result lcd_meminfo(size_t *f, size_t *t) { return lcd.memGetInfo(f, t); }
static const char *lcd_errstr(lcd_result rc) {
	const char *s = NULL;
	if (lcd.getErrorString == NULL || lcd.getErrorString(rc, &s) != 0 || s == NULL) return "unknown error";
	return s;
}
static lcd_result lcd_memset32(lcd_dptr d, unsigned int v, size_t n) { return lcd.memsetD32(d, v, n); }
static lcd_result lcd_modload(lcd_module *m, const char *image) { return lcd.moduleLoadData(m, image); }
static lcd_result lcd_modunload(lcd_module m) { return lcd.moduleUnload(m); }
static lcd_result lcd_getfn(lcd_function *f, lcd_module m, const char *name) { return lcd.moduleGetFunction(f, m, name); }

// lcd_launch launches f on a 1-D grid on the default stream; argvals holds nargs arguments,
// each in its own 8-byte slot (cuLaunchKernel reads each one at its declared size).
static lcd_result lcd_launch(lcd_function f, unsigned int grid, unsigned int block, unsigned int shmem, void *argvals, int nargs) {
	void *params[32];
	if (nargs > 32) return 1; // CUDA_ERROR_INVALID_VALUE
	for (int i = 0; i < nargs; i++) params[i] = (char *)argvals + 8 * i;
	return lcd.launchKernel(f, grid, 1, 1, block, 1, 1, shmem, NULL, params, NULL);
}
// cuBLAS, by our own prototypes: cublasStatus_t is an int, cublasHandle_t a pointer,
// cublasOperation_t an int (N = 0, T = 1); alpha and beta are host pointers (the default).
typedef int lcb_status;
typedef void *lcb_handle;
static struct {
	void *h;
	char name[256];
	lcb_status (*create)(lcb_handle *);
	lcb_status (*destroy)(lcb_handle);
	lcb_status (*sgemm)(lcb_handle, int, int, int, int, int, const float *, const float *, int,
		const float *, int, const float *, float *, int);
} lcb;

// lcb_load dlopens cuBLAS (env first, then .so.13, .12, .11) and resolves its entry points; it
// returns "" on success, else what is missing.
static const char *lcb_load(const char *env) {
	if (lcb.h != NULL) return "";
	const char *names[] = {env, "libcublas.so.13", "libcublas.so.12", "libcublas.so.11"};
	void *h = NULL;
	for (int i = 0; i < 4 && h == NULL; i++) {
		if (names[i] == NULL || names[i][0] == 0) continue;
		h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
		if (h != NULL) snprintf(lcb.name, sizeof lcb.name, "%s", names[i]);
	}
	if (h == NULL) return "libcublas";
	if ((*(void **)&lcb.create = dlsym(h, "cublasCreate_v2")) == NULL) return "cublasCreate_v2";
	if ((*(void **)&lcb.destroy = dlsym(h, "cublasDestroy_v2")) == NULL) return "cublasDestroy_v2";
	if ((*(void **)&lcb.sgemm = dlsym(h, "cublasSgemm_v2")) == NULL) return "cublasSgemm_v2";
	lcb.h = h;
	return "";
}
static const char *lcb_name(void) { return lcb.name; }
static lcb_status lcb_create(lcb_handle *hd) { return lcb.create(hd); }
static lcb_status lcb_destroy(lcb_handle hd) { return lcb.destroy(hd); }
static lcb_status lcb_sgemm(lcb_handle hd, int ta, int tb, int m, int n, int k, float alpha,
		lcd_dptr a, int lda, lcd_dptr b, int ldb, float beta, lcd_dptr c, int ldc) {
	return lcb.sgemm(hd, ta, tb, m, n, k, &alpha, (const float *)(size_t)a, lda, (const float *)(size_t)b, ldb, &beta, (float *)(size_t)c, ldc);
}

static long lcd_gettid(void) { return (long)syscall(SYS_gettid); }
*/
import "C"

import (
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"
	"unsafe"
)

// Error is a failed driver call: which call, its CUresult and the driver's text for it.
type Error struct {
	Call string
	Code int
	Msg  string
}

func (e *Error) Error() string { return fmt.Sprintf("cuda: %s: error %d (%s)", e.Call, e.Code, e.Msg) }

// ErrOutOfMemory is the CUresult of an allocation the device cannot satisfy (CUDA_ERROR_OUT_OF_MEMORY).
const ErrOutOfMemory = 2

// check turns a CUresult into nil or an *Error naming the call.
func check(call string, rc C.lcd_result) error {
	if rc == 0 {
		return nil
	}
	return &Error{Call: call, Code: int(rc), Msg: C.GoString(C.lcd_errstr(rc))}
}

var (
	loadOnce  sync.Once
	libErr    error // libcuda.so.1 missing or incomplete
	initErr   error // cuInit failed
	driverVer int
)

// loadDriver resolves the driver entry points, reads the driver version and runs cuInit, once.
func loadDriver() error {
	loadOnce.Do(func() {
		if missing := C.GoString(C.lcd_load()); missing != "" {
			if missing == "libcuda.so.1" {
				libErr = fmt.Errorf("cannot load the NVIDIA driver library libcuda.so.1 (%s)", C.GoString(C.lcd_dlerror()))
			} else {
				libErr = fmt.Errorf("libcuda.so.1 lacks %s: the driver is too old or not NVIDIA's", missing)
			}
			return
		}
		var v C.int
		if err := check("cuDriverGetVersion", C.lcd_version(&v)); err != nil {
			initErr = err
			return
		}
		driverVer = int(v)
		initErr = check("cuInit", C.lcd_init())
	})
	if libErr != nil {
		return libErr
	}
	return initErr
}

// Probe loads the driver and cuBLAS (the same loaders the backend uses) and lists the
// devices. It never fails: what is missing is in the report's Err.
func Probe() Report {
	rep := Report{Built: true, Devices: []Device{}}
	err := loadDriver()
	if libErr == nil {
		rep.LibCUDA = "libcuda.so.1"
		rep.DriverVersion = driverVer
	}
	if berr := loadBLAS(); berr == nil {
		rep.LibCUBLAS = blasName
	} else if err == nil {
		err = berr
	}
	if err != nil && (libErr != nil || initErr != nil) {
		rep.Err = strings.TrimPrefix(err.Error(), "cuda: ")
		return rep
	}
	var n C.int
	if cerr := check("cuDeviceGetCount", C.lcd_count(&n)); cerr != nil {
		rep.Err = strings.TrimPrefix(cerr.Error(), "cuda: ")
		return rep
	}
	for i := 0; i < int(n); i++ {
		var name [256]C.char
		var mem C.size_t
		var major, minor C.int
		if cerr := check("cuDeviceGet", C.lcd_describe(C.int(i), &name[0], 256, &mem, &major, &minor)); cerr != nil {
			rep.Err = strings.TrimPrefix(cerr.Error(), "cuda: ")
			return rep
		}
		rep.Devices = append(rep.Devices, Device{Index: i, Name: C.GoString(&name[0]), MemoryBytes: uint64(mem),
			ComputeMajor: int(major), ComputeMinor: int(minor)})
	}
	switch {
	case err != nil: // cuBLAS missing
		rep.Err = strings.TrimPrefix(err.Error(), "cuda: ")
	case len(rep.Devices) == 0:
		rep.Err = "the driver reports no CUDA device"
	}
	return rep
}

// Ptr is a device address.
type Ptr uint64

// gettid returns the calling OS thread's id (Linux), for tests of the context's thread.
func gettid() int { return int(C.lcd_gettid()) }

// The raw calls below run on the context's owner thread (see Context.do).

func drvRetain(ordinal int) (ctx unsafe.Pointer, dev C.lcd_device, err error) {
	var c C.lcd_ctx
	err = check("cuDevicePrimaryCtxRetain", C.lcd_retain(C.int(ordinal), &c, &dev))
	return unsafe.Pointer(c), dev, err
}

func drvRelease(dev C.lcd_device) error {
	return check("cuDevicePrimaryCtxRelease", C.lcd_release(dev))
}

func drvSync() error { return check("cuCtxSynchronize", C.lcd_sync()) }

func drvAlloc(n int) (Ptr, error) {
	var p C.lcd_dptr
	err := check("cuMemAlloc", C.lcd_alloc(&p, C.size_t(n)))
	return Ptr(p), err
}

func drvFree(p Ptr) error { return check("cuMemFree", C.lcd_free(C.lcd_dptr(p))) }

func drvHtoD(dst Ptr, src unsafe.Pointer, n int) error {
	return check("cuMemcpyHtoD", C.lcd_htod(C.lcd_dptr(dst), src, C.size_t(n)))
}

func drvDtoH(dst unsafe.Pointer, src Ptr, n int) error {
	return check("cuMemcpyDtoH", C.lcd_dtoh(dst, C.lcd_dptr(src), C.size_t(n)))
}

func drvDtoD(dst, src Ptr, n int) error {
	return check("cuMemcpyDtoD", C.lcd_dtod(C.lcd_dptr(dst), C.lcd_dptr(src), C.size_t(n)))
}

func drvMemInfo() (free, total uint64, err error) {
	var f, t C.size_t
	err = check("cuMemGetInfo", C.lcd_meminfo(&f, &t))
	return uint64(f), uint64(t), err
}

func drvMemset32(dst Ptr, v uint32, n int) error {
	return check("cuMemsetD32", C.lcd_memset32(C.lcd_dptr(dst), C.uint(v), C.size_t(n)))
}

// module is a loaded PTX module and its functions.
type module struct {
	m   C.lcd_module
	fns map[string]C.lcd_function
}

// drvLoadModule loads PTX text (the driver JIT-compiles it for the current device) and resolves
// the named functions.
func drvLoadModule(ptx string, names []string) (*module, error) {
	img := C.CString(ptx)
	defer C.free(unsafe.Pointer(img))
	md := &module{fns: map[string]C.lcd_function{}}
	if err := check("cuModuleLoadData", C.lcd_modload(&md.m, img)); err != nil {
		return nil, err
	}
	for _, name := range names {
		cn := C.CString(name)
		var f C.lcd_function
		err := check("cuModuleGetFunction("+name+")", C.lcd_getfn(&f, md.m, cn))
		C.free(unsafe.Pointer(cn))
		if err != nil {
			C.lcd_modunload(md.m)
			return nil, err
		}
		md.fns[name] = f
	}
	return md, nil
}

func (md *module) unload() error { return check("cuModuleUnload", C.lcd_modunload(md.m)) }

// argSlots is C memory for one launch's arguments (owner thread only, reused).
type argSlots struct{ p unsafe.Pointer }

func (s *argSlots) free() {
	if s.p != nil {
		C.free(s.p)
		s.p = nil
	}
}

const maxKernelArgs = 32

// drvLaunch launches fn with args (Ptr, int32, int64, float32, uint32 values) on grid×block.
func drvLaunch(slots *argSlots, mods []*module, fn string, grid, block, shmem int, args []any) error {
	var f C.lcd_function
	found := false
	for _, md := range mods {
		if f, found = md.fns[fn]; found {
			break
		}
	}
	if !found {
		return fmt.Errorf("cuda: no kernel %q in the loaded modules", fn)
	}
	if len(args) > maxKernelArgs {
		return fmt.Errorf("cuda: %s: %d arguments, at most %d", fn, len(args), maxKernelArgs)
	}
	if slots.p == nil {
		slots.p = C.malloc(8 * maxKernelArgs)
	}
	vals := unsafe.Slice((*uint64)(slots.p), maxKernelArgs)
	for i, a := range args {
		switch v := a.(type) {
		case Ptr:
			vals[i] = uint64(v)
		case int32:
			vals[i] = uint64(uint32(v))
		case int64:
			vals[i] = uint64(v)
		case uint32:
			vals[i] = uint64(v)
		case float32:
			vals[i] = uint64(math.Float32bits(v))
		default:
			return fmt.Errorf("cuda: %s: argument %d has type %T (want Ptr, int32, int64, uint32 or float32)", fn, i, a)
		}
	}
	return check("cuLaunchKernel("+fn+")", C.lcd_launch(f, C.uint(grid), C.uint(block), C.uint(shmem), slots.p, C.int(len(args))))
}

// blasHandle is a cuBLAS handle of the context (created on the owner thread).
type blasHandle struct{ h C.lcb_handle }

var (
	blasOnce sync.Once
	blasErr  error
	blasName string
)

// loadBLAS resolves cuBLAS once.
func loadBLAS() error {
	blasOnce.Do(func() {
		env := C.CString(os.Getenv("LORACTL_CUBLAS"))
		defer C.free(unsafe.Pointer(env))
		if missing := C.GoString(C.lcb_load(env)); missing != "" {
			if missing == "libcublas" {
				blasErr = errors.New("cuda: cuBLAS not found (tried $LORACTL_CUBLAS, libcublas.so.13, .12, .11): install the CUDA runtime libraries or point LORACTL_CUBLAS at libcublas.so")
			} else {
				blasErr = fmt.Errorf("cuda: %s has no %s: cuBLAS is too old", C.GoString(C.lcb_name()), missing)
			}
			return
		}
		blasName = C.GoString(C.lcb_name())
	})
	return blasErr
}

// checkBLAS turns a cublasStatus_t into nil or an *Error.
func checkBLAS(call string, st C.lcb_status) error {
	if st == 0 {
		return nil
	}
	return &Error{Call: call, Code: int(st), Msg: "cuBLAS status " + strconv.Itoa(int(st))}
}

func blasCreate() (*blasHandle, error) {
	var h C.lcb_handle
	if err := checkBLAS("cublasCreate", C.lcb_create(&h)); err != nil {
		return nil, err
	}
	return &blasHandle{h: h}, nil
}

func (b *blasHandle) destroy() error { return checkBLAS("cublasDestroy", C.lcb_destroy(b.h)) }

// sgemm is cublasSgemm (column-major): C = alpha·op(A)·op(B) + beta·C, op(A) m×k, op(B) k×n.
func (b *blasHandle) sgemm(transA, transB bool, m, n, k int, alpha float32, a Ptr, lda int, bm Ptr, ldb int, beta float32, c Ptr, ldc int) error {
	op := func(t bool) C.int {
		if t {
			return 1
		}
		return 0
	}
	return checkBLAS("cublasSgemm", C.lcb_sgemm(b.h, op(transA), op(transB), C.int(m), C.int(n), C.int(k),
		C.float(alpha), C.lcd_dptr(a), C.int(lda), C.lcd_dptr(bm), C.int(ldb), C.float(beta), C.lcd_dptr(c), C.int(ldc)))
}
