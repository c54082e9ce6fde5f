package diffugpt

// Exported Go trampolines called by the C shims in diffugpt.go. A file with //export
// directives may only declare (not define) C functions in its preamble, so the shims live in
// diffugpt.go.

/*
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
*/
import "C"

import (
	"fmt"
	"runtime/cgo"
	"runtime/debug"
	"sync"
	"unsafe"
)

// callbacks is the per-call state a cgo.Handle points to: the user's Go callbacks and the
// first panic any of them raised (a Go panic must never unwind through C frames).
type callbacks struct {
	onStep      func(step, total uint32, canvas []uint32) bool
	shouldAbort func() bool
	progress    func(float32)

	mu       sync.Mutex
	panicked bool
	panicErr *PanicError
}

func (c *callbacks) recordPanic(v any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.panicked {
		c.panicked = true
		c.panicErr = &PanicError{Value: v, Stack: debug.Stack()}
	}
}

func (c *callbacks) failed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.panicked
}

// err returns the recorded panic as an error, or nil.
func (c *callbacks) err() error {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.panicked {
		return c.panicErr
	}
	return nil
}

// PanicError is returned when a Go callback (OnStep, ShouldAbort, Progress) panicked. The
// panic is recovered inside the trampoline, the library call is stopped, and the panic is
// reported here instead of crossing into C.
type PanicError struct {
	Value any    // the value passed to panic
	Stack []byte // the callback's goroutine stack at the time of the panic
}

func (e *PanicError) Error() string {
	return fmt.Sprintf("diffugpt: callback panicked: %v", e.Value)
}

func handleValue(h C.uintptr_t) *callbacks {
	return cgo.Handle(uintptr(h)).Value().(*callbacks)
}

//export dgptGoStep
func dgptGoStep(step, total C.uint32_t, canvas *C.uint32_t, n C.size_t, h C.uintptr_t) (ret C.bool) {
	cb := handleValue(h)
	if cb.failed() {
		return false
	}
	defer func() {
		if r := recover(); r != nil {
			cb.recordPanic(r)
			ret = false // stop the generation
		}
	}()
	if cb.onStep == nil {
		return true
	}
	var c []uint32
	if n > 0 && canvas != nil {
		// The canvas is only valid during this call: copy it into Go memory.
		c = make([]uint32, int(n))
		copy(c, unsafe.Slice((*uint32)(unsafe.Pointer(canvas)), int(n)))
	}
	return C.bool(cb.onStep(uint32(step), uint32(total), c))
}

//export dgptGoAbort
func dgptGoAbort(h C.uintptr_t) (ret C.bool) {
	cb := handleValue(h)
	if cb.failed() {
		return true
	}
	defer func() {
		if r := recover(); r != nil {
			cb.recordPanic(r)
			ret = true // abort the generation
		}
	}()
	if cb.shouldAbort == nil {
		return false
	}
	return C.bool(cb.shouldAbort())
}

//export dgptGoProgress
func dgptGoProgress(progress C.float, h C.uintptr_t) (ret C.bool) {
	cb := handleValue(h)
	if cb.failed() {
		return false
	}
	defer func() {
		if r := recover(); r != nil {
			cb.recordPanic(r)
			ret = false
		}
	}()
	if cb.progress != nil {
		cb.progress(float32(progress))
	}
	return true
}
