//go:build !unix

package merge

// releasePages is a no-op where madvise is not available.
func releasePages([]byte) {}
