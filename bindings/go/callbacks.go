package afsm

// The Go ends of the engine's hooks. shim.c's trampolines call these with
// the runtime/cgo.Handle the Manager registered as the hooks' ctx, so C
// never holds a Go pointer. A panic must not unwind through C frames, so
// each one is recovered here and reported to the Logger (if any).

/*
#include "shim.h"
*/
import "C"

import (
	"fmt"
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
	defer func() {
		if r := recover(); r != nil {
			h.recovered("OnEvent", r)
		}
	}()
	h.onEvent(e)
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
	defer func() {
		if r := recover(); r != nil {
			h.recovered("Logger", r)
		}
	}()
	h.logger.Log(LogLevel(level), C.GoString(msg), fs)
}

//export afsmgoClock
func afsmgoClock(ctx C.uintptr_t) C.uint64_t {
	h := cgo.Handle(ctx).Value().(*hooks)
	defer func() {
		if r := recover(); r != nil {
			h.recovered("Clock", r)
		}
	}()
	return C.uint64_t(h.clock())
}
