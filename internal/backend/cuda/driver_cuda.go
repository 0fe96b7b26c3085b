//go:build cuda

package cuda

/*
#cgo LDFLAGS: -ldl
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <unistd.h>
#include <sys/syscall.h>

// Our prototypes of the driver API calls the backend uses (CUDA driver API; the _v2 entry
// points are the 64-bit ones every driver since CUDA 3.2 exports). CUresult and CUdevice are
// ints, CUdeviceptr is an unsigned 64-bit integer, contexts are opaque pointers.
typedef int lcd_result;
typedef int lcd_device;
typedef unsigned long long lcd_dptr;
typedef void *lcd_ctx;

static struct {
	void *h;
	lcd_result (*init)(unsigned int);
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
} lcd;

// lcd_load dlopens libcuda.so.1 and resolves every entry point; it returns the name of the
// first one missing, "" on success, or "libcuda.so.1" when the library itself is missing.
static const char *lcd_load(void) {
	if (lcd.h != NULL) return "";
	void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
	if (h == NULL) return "libcuda.so.1";
#define LCD_SYM(field, name) if ((*(void **)&lcd.field = dlsym(h, name)) == NULL) return name;
	LCD_SYM(init, "cuInit")
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
#undef LCD_SYM
	lcd.h = h;
	return "";
}

static lcd_result lcd_init(void) { return lcd.init(0); }
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
static long lcd_gettid(void) { return (long)syscall(SYS_gettid); }
*/
import "C"

import (
	"errors"
	"fmt"
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
	loadOnce sync.Once
	loadErr  error
)

// loadDriver resolves the driver entry points once.
func loadDriver() error {
	loadOnce.Do(func() {
		if missing := C.GoString(C.lcd_load()); missing != "" {
			if missing == "libcuda.so.1" {
				loadErr = errors.New("cuda: cannot load the NVIDIA driver library libcuda.so.1")
			} else {
				loadErr = fmt.Errorf("cuda: libcuda.so.1 has no %s: the driver is too old", missing)
			}
			return
		}
		loadErr = check("cuInit", C.lcd_init())
	})
	return loadErr
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
