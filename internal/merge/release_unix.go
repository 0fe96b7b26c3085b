//go:build unix

package merge

import (
	"os"

	"golang.org/x/sys/unix"
)

// releasePages tells the kernel that this process is done with the whole pages inside b, a view
// of a read-only memory-mapped base tensor, so they leave its resident set (they stay in the page
// cache and are read back if touched again). Without it, the resident set of a merge would grow
// to the size of the base as the mapping is read through, although the heap stays small.
func releasePages(b []byte) {
	ps := os.Getpagesize()
	if len(b) < 2*ps {
		return
	}
	off := 0
	if r := int(uintptrOf(b) % uintptr(ps)); r != 0 {
		off = ps - r
	}
	n := (len(b) - off) / ps * ps
	if n > 0 {
		_ = unix.Madvise(b[off:off+n], unix.MADV_DONTNEED) // advisory: an error changes nothing
	}
}
