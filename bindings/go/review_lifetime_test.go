package afsm

import (
	"context"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// Review 14. A Handle's Touch can fire OnEvent on the calling goroutine (a
// heartbeat moves a CONNECTING session to ACTIVE). Releasing that handle
// from the event is a plain user action, but Release shuts the handle's
// gate and waits for the Touch in flight: the very call that is running the
// callback. It must not wait for itself forever.
func TestReleaseHandleFromOnEventFiredByItsTouch(t *testing.T) {
	var pinned atomic.Pointer[Handle]
	released := make(chan error, 1)
	clk := newVClock()
	m, err := NewManager(&ManagerConfig{
		ManualReaper:   true,
		Clock:          clk.now,
		DefaultTimeout: time.Minute,
		OnEvent: func(e Event) {
			if h := pinned.Load(); h != nil && e.NewState == StateActive {
				released <- h.Release()
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	hung := false
	t.Cleanup(func() {
		if !hung { // a hung Release holds the handle lock Close needs
			_ = m.Close()
		}
	})
	ctx := context.Background()
	s, _, err := m.CreateSession(ctx, "u", "10.0.0.1", 1, mustV7(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	h, err := m.Pin(ctx, s.SessionID)
	if err != nil {
		t.Fatal(err)
	}
	pinned.Store(h)
	done := make(chan error, 1)
	go func() {
		_, err := h.Touch()
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Touch: %v", err)
		}
	case <-time.After(20 * time.Second):
		hung = true
		t.Fatal("Touch did not return within 20s: Release from its OnEvent waits for the Touch itself")
	}
	select {
	case err := <-released:
		if err != nil {
			t.Fatalf("Release in OnEvent: %v", err)
		}
	default:
		t.Fatal("OnEvent did not see the CONNECTING -> ACTIVE change (the test did not exercise the path)")
	}
	if n, err := m.Pinned(); err != nil || n != 0 {
		t.Fatalf("Pinned = %d, %v; want 0", n, err)
	}
}

// Review 14. Close holds handlesMu while it waits, handle by handle, for the
// Touch calls in flight. If such a Touch fired OnEvent and the callback
// releases some other handle (Release takes handlesMu), Close waits for the
// Touch, the Touch for its callback, the callback for Close's lock: forever.
func TestCloseWhileOnEventFromTouchReleasesAnotherHandle(t *testing.T) {
	var first, second atomic.Pointer[Handle]
	var m *Manager
	inCallback := make(chan struct{})
	released := make(chan error, 1)
	clk := newVClock()
	m, err := NewManager(&ManagerConfig{
		ManualReaper:   true,
		Clock:          clk.now,
		DefaultTimeout: time.Minute,
		OnEvent: func(e Event) {
			h2 := second.Load()
			if first.Load() == nil || h2 == nil || e.NewState != StateActive {
				return
			}
			close(inCallback)
			// Wait (bounded) until Close has shut the gate and holds the
			// handle table lock, so the order below is the one that matters.
			deadline := time.Now().Add(10 * time.Second)
			for time.Now().Before(deadline) {
				if m.gate.isShut() && !m.handlesMu.TryLock() {
					break
				} else if m.gate.isShut() {
					m.handlesMu.Unlock()
				}
				runtime.Gosched()
			}
			released <- h2.Release()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	a, _, err := m.CreateSession(ctx, "u", "10.0.0.1", 1, mustV7(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := m.CreateSession(ctx, "u", "10.0.0.1", 2, mustV7(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	h1, err := m.Pin(ctx, a.SessionID)
	if err != nil {
		t.Fatal(err)
	}
	h2, err := m.Pin(ctx, b.SessionID)
	if err != nil {
		t.Fatal(err)
	}
	second.Store(h2)
	first.Store(h1)
	touched := make(chan error, 1)
	go func() {
		_, err := h1.Touch()
		touched <- err
	}()
	select {
	case <-inCallback:
	case <-time.After(20 * time.Second):
		t.Fatal("OnEvent did not fire for the CONNECTING -> ACTIVE change")
	}
	closed := make(chan error, 1)
	go func() { closed <- m.Close() }()
	deadline := time.After(30 * time.Second)
	for _, ch := range []chan error{touched, released, closed} {
		select {
		case err := <-ch:
			_ = err // ErrClosed or nil are both fine; returning is what counts
		case <-deadline:
			t.Fatal("Close, the Touch and its OnEvent's Release deadlocked (30s)")
		}
	}
}

// A Release made in a callback that no call on the handle is running (here
// OnEvent fired by Manager.Heartbeat) has nothing to wait for: the session
// is unpinned before Heartbeat returns, and the handle answers ErrClosed.
func TestReleaseInCallbackWithNoCallOnTheHandleUnpinsAtOnce(t *testing.T) {
	var pinned atomic.Pointer[Handle]
	clk := newVClock()
	m, err := NewManager(&ManagerConfig{
		ManualReaper:   true,
		Clock:          clk.now,
		DefaultTimeout: time.Minute,
		OnEvent: func(e Event) {
			if h := pinned.Load(); h != nil && e.NewState == StateActive {
				_ = h.Release()
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	ctx := context.Background()
	s, _, err := m.CreateSession(ctx, "u", "10.0.0.1", 1, mustV7(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	h, err := m.Pin(ctx, s.SessionID)
	if err != nil {
		t.Fatal(err)
	}
	pinned.Store(h)
	if _, err := m.Heartbeat(ctx, s.SessionID); err != nil {
		t.Fatalf("Heartbeat: %v", err)
	}
	if n, err := m.Pinned(); err != nil || n != 0 {
		t.Fatalf("Pinned = %d, %v; want 0", n, err)
	}
	if _, err := h.Touch(); err != ErrClosed {
		t.Fatalf("Touch after Release = %v; want ErrClosed", err)
	}
}
