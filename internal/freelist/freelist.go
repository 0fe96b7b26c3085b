// Package freelist is a mutex-guarded stack of reusable objects. Unlike sync.Pool it keeps its
// objects across garbage collections and does not allocate when objects move between threads,
// so once warm a training step that recycles through it allocates nothing.
package freelist

import "sync"

// List holds recycled *T. The zero value is ready to use.
type List[T any] struct {
	mu    sync.Mutex
	items []*T
}

// Get returns a recycled object, or nil when there is none.
func (l *List[T]) Get() *T {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := len(l.items)
	if n == 0 {
		return nil
	}
	v := l.items[n-1]
	l.items[n-1] = nil
	l.items = l.items[:n-1]
	return v
}

// GetIf returns the most recently recycled object for which ok is true (removing it from the
// list), or nil when there is none.
func (l *List[T]) GetIf(ok func(*T) bool) *T {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := len(l.items) - 1; i >= 0; i-- {
		if v := l.items[i]; ok(v) {
			last := len(l.items) - 1
			l.items[i] = l.items[last]
			l.items[last] = nil
			l.items = l.items[:last]
			return v
		}
	}
	return nil
}

// Put recycles v.
func (l *List[T]) Put(v *T) {
	l.mu.Lock()
	l.items = append(l.items, v)
	l.mu.Unlock()
}

// Len returns the number of objects held.
func (l *List[T]) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.items)
}
