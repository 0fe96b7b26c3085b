package freelist

import (
	"runtime"
	"sync"
	"testing"
)

func TestGetPut(t *testing.T) {
	var l List[int]
	if l.Get() != nil {
		t.Fatal("empty list returned an object")
	}
	a, b := new(int), new(int)
	*a, *b = 1, 2
	l.Put(a)
	l.Put(b)
	if got := l.Get(); got != b {
		t.Fatalf("Get = %v, want the last Put (%p)", got, b)
	}
	if got := l.GetIf(func(v *int) bool { return *v == 5 }); got != nil {
		t.Fatalf("GetIf matched %d", *got)
	}
	if got := l.GetIf(func(v *int) bool { return *v == 1 }); got != a || l.Len() != 0 {
		t.Fatalf("GetIf = %v, len %d", got, l.Len())
	}
}

// TestSurvivesGCAndNoAllocs: objects stay across collections, and a warm Get/Put cycle
// allocates nothing.
func TestSurvivesGCAndNoAllocs(t *testing.T) {
	var l List[[64]byte]
	for range 4 {
		l.Put(new([64]byte))
	}
	runtime.GC()
	runtime.GC()
	if l.Len() != 4 {
		t.Fatalf("%d objects after GC, want 4", l.Len())
	}
	if n := testing.AllocsPerRun(100, func() { l.Put(l.Get()) }); n != 0 {
		t.Fatalf("Get/Put allocates %.1f times per cycle", n)
	}
}

// TestConcurrent: goroutines taking and returning objects lose none (run with -race).
func TestConcurrent(t *testing.T) {
	var l List[int]
	for i := range 8 {
		v := i
		l.Put(&v)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 1000 {
				if v := l.Get(); v != nil {
					l.Put(v)
				}
			}
		}()
	}
	wg.Wait()
	if l.Len() != 8 {
		t.Fatalf("%d objects after concurrent use, want 8", l.Len())
	}
}
