package afsm

/*
#include "shim.h"
*/
import "C"

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// Handle pins one session for the data plane: Touch and AddStats reach it
// without a lookup. It stays safe to use after the session is deleted or
// expires (its calls then return ErrSessionNotFound or ErrSessionExpired),
// and after Release or Manager.Close (ErrClosed). A Handle may be used
// from many goroutines at once. Release it when done; a finalizer releases
// a forgotten one, but only when the garbage collector gets to it, and the
// engine's memory for the session stays pinned until then.
type Handle struct {
	c *handleCore
}

// handleCore is what the Manager tracks, so that Close can release every
// pinned handle; the Handle wrapping it stays collectable, which lets its
// finalizer run.
type handleCore struct {
	m    *Manager
	h    *C.afsm_handle
	hp   C.uintptr_t // h as an integer, for the hot-path helpers
	id   UUID
	gate gate
	once sync.Once
	// releasePending: Release ran inside a callback while calls on the
	// handle may be in progress (one of them may be the call that fired
	// the callback); the last of them to leave unpins the session.
	releasePending atomic.Bool
}

// Pin pins a session by id. Errors match ErrSessionNotFound,
// ErrSessionExpired, ErrOutOfMemory, ErrClosed or ctx.Err().
func (m *Manager) Pin(ctx context.Context, sessionID UUID) (*Handle, error) {
	return m.pin(ctx, "Pin", sessionID, false)
}

// PinByConnection pins a session by its connection id.
func (m *Manager) PinByConnection(ctx context.Context, connID UUID) (*Handle, error) {
	return m.pin(ctx, "PinByConnection", connID, true)
}

func (m *Manager) pin(ctx context.Context, op string, id UUID, byConn bool) (*Handle, error) {
	s, err := m.enter(ctx, id[15])
	if err != nil {
		return nil, err
	}
	defer s.leave()
	var bc C.int
	if byConn {
		bc = 1
	}
	hi, lo := id.halves()
	var ch *C.afsm_handle
	if st := C.afsmgo_pin(m.eng, hi, lo, bc, &ch); st != C.AFSM_OK {
		return nil, statusError(op, st)
	}
	core := &handleCore{m: m, h: ch, hp: C.uintptr_t(uintptr(unsafe.Pointer(ch))), gate: newGate(1)}
	if byConn {
		var u UUID
		C.afsm_handle_session_id(ch, u.c())
		core.id = u
	} else {
		core.id = id
	}
	// Safe against Close: Close shuts the gate (waiting for this call)
	// before it walks the map.
	m.handlesMu.Lock()
	m.handles[core] = struct{}{}
	m.handlesMu.Unlock()
	h := &Handle{c: core}
	runtime.SetFinalizer(h, func(h *Handle) { h.c.release() })
	return h, nil
}

// SessionID returns the pinned session's id.
func (h *Handle) SessionID() UUID { return h.c.id }

// Touch is Heartbeat through the handle: the deadline moves to now + the
// session's timeout; it returns the time left. Atomics only, no lookup.
func (h *Handle) Touch() (time.Duration, error) {
	s := h.c.enter()
	if s == nil {
		return 0, ErrClosed
	}
	r := C.afsmgo_handle_heartbeat(h.c.hp)
	h.c.leave(s)
	runtime.KeepAlive(h)
	if r < 0 {
		return 0, codeError("Handle.Touch", C.afsm_status(r))
	}
	return time.Duration(r) * time.Millisecond, nil
}

// Heartbeat is Touch, named as on the Manager.
func (h *Handle) Heartbeat() (time.Duration, error) { return h.Touch() }

// AddStats is Manager.AddStats through the handle.
func (h *Handle) AddStats(delta Stats) error {
	s := h.c.enter()
	if s == nil {
		return ErrClosed
	}
	st := C.afsmgo_handle_add_stats(h.c.hp, C.uint64_t(delta.PacketsSent), C.uint64_t(delta.PacketsReceived),
		C.uint64_t(delta.BytesSent), C.uint64_t(delta.BytesReceived), C.uint64_t(delta.Retransmissions),
		C.uint32_t(delta.CurrentRTTMs))
	h.c.leave(s)
	runtime.KeepAlive(h)
	if st != C.AFSM_OK {
		return codeError("Handle.AddStats", st)
	}
	return nil
}

// Release unpins the session, waiting for calls in progress on the handle.
// Calls made afterwards return ErrClosed. A second Release, or one after
// Manager.Close, is a no-op. It always returns nil. Called from a callback
// (OnEvent, Logger, Clock) it does not wait: the call that fired the
// callback may be this handle's own, so the handle closes at once and the
// session is unpinned as the last call in progress on the handle returns
// (at once if there is none). When that Touch or AddStats has returned,
// Manager.Pinned no longer counts the handle.
func (h *Handle) Release() error {
	runtime.SetFinalizer(h, nil)
	h.c.release()
	return nil
}

func (c *handleCore) release() {
	m := c.m
	m.handlesMu.Lock()
	_, pinned := m.handles[c] // nil map (closed): not pinned
	m.handlesMu.Unlock()
	if !pinned {
		return
	}
	// The handle stays in m.handles until it is unpinned, so that a Close
	// meanwhile finishes it too (waiting for the unpin) before it closes
	// the engine.
	if C.afsmgo_in_callback() != 0 {
		c.releasePending.Store(true)
		c.gate.closed.Store(true) // no new calls from here on
		c.finishIfIdle()
		return
	}
	c.finish()
	c.forget()
}

// forget takes a finished handle out of the Manager's table.
func (c *handleCore) forget() {
	m := c.m
	m.handlesMu.Lock()
	if m.handles != nil {
		delete(m.handles, c)
	}
	m.handlesMu.Unlock()
}

// enter and leave bracket a data-plane call on the handle (gate.enterHot).
// A call that leaves a closed gate, or backs out of one, checks whether a
// Release made in a callback waits for it: the last one out unpins.
func (c *handleCore) enter() *stripe {
	s := c.gate.enterHot(0)
	if s == nil {
		c.finishIfIdle()
	}
	return s
}

func (c *handleCore) leave(s *stripe) {
	s.leaveHot()
	if c.gate.closed.Load() { // the line enterHot just read: no extra miss
		c.finishIfIdle()
	}
}

// finishIfIdle finishes a pending Release once no call is in progress.
// Ordering (Go atomics are sequentially consistent): Release stores closed
// and then reads the count; a call decrements the count and then reads
// closed. So either Release sees the count at zero, or the last call out
// sees closed; whichever does (or both: the Once) unpins.
func (c *handleCore) finishIfIdle() {
	if !c.releasePending.Load() || c.gate.inProgress() != 0 {
		return
	}
	c.finish()
	c.forget()
}

// finish waits for the handle's calls in progress and unpins the session,
// once, whoever asks first (release or Manager.Close). Never with
// handlesMu held: see Manager.Close.
func (c *handleCore) finish() {
	c.once.Do(func() {
		c.gate.shut()
		C.afsm_handle_release(c.h)
		c.h, c.hp = nil, 0
	})
}
