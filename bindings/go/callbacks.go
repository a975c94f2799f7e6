package afsm

// The Go ends of the engine's hooks. shim.c's trampolines call these with
// the runtime/cgo.Handle the Manager registered as the hooks' ctx, so C
// never holds a Go pointer. Nothing may unwind through C frames: the user's
// hook runs on a goroutine of its own (see hooks.run), where a panic is
// recovered and runtime.Goexit ends only that goroutine; both are reported
// to the Logger (if any).

/*
#include "shim.h"
*/
import "C"

import (
	"fmt"
	"runtime"
	"runtime/cgo"
	"time"
	"unsafe"
)

// hooks is what the cgo.Handle refers to.
type hooks struct {
	onEvent func(Event)
	logger  Logger
	clock   func() int64
}

// run calls f, a user's hook, on a goroutine of its own and waits for it.
// runtime.Goexit (t.FailNow, t.Fatal, t.SkipNow) is no panic: no recover
// stops it, and on the callback's goroutine it unwound the engine's C frames
// under the callback, so the engine call never finished (measured: SIGSEGV
// in afsmgo_create, or the thread left marked as inside a hook). On its own
// goroutine it ends that goroutine only. The goroutine is locked to a thread
// marked as inside a hook, so that Close and Handle.Release called from f
// know they are. The cost, a goroutine start and a channel handoff per hook
// call, is paid per session event or log line, and per engine operation
// only with Clock (which is for tests).
func (h *hooks) run(where string, f func()) {
	done := make(chan struct{})
	go func() {
		defer close(done) // deferred calls run on Goexit too, this one last
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		C.afsmgo_hook_enter()
		defer C.afsmgo_hook_leave()
		returned := false
		defer func() {
			r := recover()
			if r == nil && !returned {
				r = "runtime.Goexit (t.FailNow, t.Fatal, t.SkipNow?): it ended the hook only"
			}
			if r != nil {
				h.recovered(where, r)
			}
		}()
		f()
		returned = true
	}()
	<-done
}

func (h *hooks) recovered(where string, r interface{}) {
	if h.logger == nil {
		return
	}
	defer func() { _ = recover() }() // a panicking logger must not kill the process either
	h.logger.Log(LogError, "afsm: "+where+" panicked", []LogField{{Key: "panic", Value: fmt.Sprint(r)}})
}

//export afsmgoEvent
func afsmgoEvent(ctx C.uintptr_t, ev *C.afsm_event) {
	h := cgo.Handle(ctx).Value().(*hooks)
	e := Event{
		Type:         EventType(ev._type),
		OldState:     State(ev.old_state),
		NewState:     State(ev.new_state),
		SessionID:    *(*UUID)(unsafe.Pointer(&ev.session_id)),
		ConnectionID: *(*UUID)(unsafe.Pointer(&ev.connection_id)),
		UserID:       C.GoStringN(ev.user_id, C.int(ev.user_id_len)),
		Reason:       C.GoStringN(ev.reason, C.int(ev.reason_len)),
		CreatedAt:    time.Unix(0, int64(ev.created_at_ns)),
		At:           time.Unix(0, int64(ev.event_at_ns)),
	}
	h.run("OnEvent", func() { h.onEvent(e) })
}

//export afsmgoLog
func afsmgoLog(ctx C.uintptr_t, level C.int, msg *C.char, fields *C.afsm_log_field, n C.size_t) {
	h := cgo.Handle(ctx).Value().(*hooks)
	var fs []LogField
	if n > 0 {
		cf := unsafe.Slice(fields, int(n))
		fs = make([]LogField, len(cf))
		for i := range cf {
			fs[i] = LogField{Key: C.GoString(cf[i].key), Value: C.GoString(cf[i].value)}
		}
	}
	m := C.GoString(msg)
	h.run("Logger", func() { h.logger.Log(LogLevel(level), m, fs) })
}

//export afsmgoClock
func afsmgoClock(ctx C.uintptr_t) C.uint64_t {
	h := cgo.Handle(ctx).Value().(*hooks)
	var now int64 // 0 if the clock panics or calls runtime.Goexit, as before
	h.run("Clock", func() { now = h.clock() })
	return C.uint64_t(now)
}
