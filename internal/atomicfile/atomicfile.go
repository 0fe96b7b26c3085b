// Package atomicfile writes files so that a reader, or a crash, never sees half of one: the
// data go to a temporary file in the same folder, which is synced, renamed over the target,
// and the folder is synced.
package atomicfile

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
)

// Write writes data to path atomically with mode 0644. On error path is untouched and the
// temporary file is removed; the error names path, and says so when the disk is full.
func Write(path string, data []byte) error {
	return WriteFunc(path, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}

// WriteFunc is Write for data that body streams: body writes the file's contents to w (a
// buffered writer over the temporary file, flushed before the sync). On any error, body's
// included, path is untouched and the temporary file is removed.
func WriteFunc(path string, body func(w io.Writer) error) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
			if errors.Is(err, syscall.ENOSPC) {
				err = fmt.Errorf("%w (the disk is full; free space and run again; no partial file was left)", err)
			}
		}
	}()
	w := bufio.NewWriterSize(f, 1<<20)
	if err = body(w); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = w.Flush(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = f.Chmod(0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("write %s: fsync: %w", path, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	SyncDir(dir)
	return nil
}

// SyncDir flushes a folder's entries (a rename into it) to disk; errors are ignored because
// some filesystems cannot sync folders.
func SyncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
