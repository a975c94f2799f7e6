package afsm

import (
	"context"
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
