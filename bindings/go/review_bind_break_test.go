package afsm

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// Review (breaker). A Release made outside any callback deletes the handle
// from m.handles and only then waits (gate.shut) for the handle's calls in
// progress before it unpins. A Close in that window finds no handle to
// finish, does not wait for the Release, and calls afsm_engine_close while
// the session is still pinned (and a Touch is still running in the
// engine): Close fails with EBUSY and the engine leaks (closeOnce is spent).
// Close must wait for a Release in progress as it waits for a pending one.
func TestCloseWaitsForReleaseWaitingOnTouch(t *testing.T) {
	var pinned atomic.Pointer[Handle]
	inCallback := make(chan struct{})
	closed := make(chan error, 1)
	clk := newVClock()
	m, err := NewManager(&ManagerConfig{
		ManualReaper:   true,
		Clock:          clk.now,
		DefaultTimeout: time.Minute,
		OnEvent: func(e Event) {
			if pinned.Load() == nil || e.NewState != StateActive {
				return
			}
			close(inCallback)
			// Hold the Touch in flight until Close has returned (a broken
			// Close) or for a bounded time (a correct Close waits for us).
			select {
			case err := <-closed:
				closed <- err
			case <-time.After(3 * time.Second):
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
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
	touched := make(chan error, 1)
	go func() { _, err := h.Touch(); touched <- err }()
	select {
	case <-inCallback:
	case <-time.After(20 * time.Second):
		t.Fatal("OnEvent did not fire for CONNECTING -> ACTIVE")
	}
	released := make(chan error, 1)
	go func() { released <- h.Release() }()
	// Wait (bounded) until the Release has taken the handle out of the
	// table and waits for the Touch.
	deadline := time.Now().Add(10 * time.Second)
	for {
		m.handlesMu.Lock()
		n := len(m.handles)
		m.handlesMu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Release did not take the handle out of the table")
		}
		time.Sleep(time.Millisecond)
	}
	go func() { closed <- m.Close() }()
	for name, ch := range map[string]chan error{"Touch": touched, "Release": released} {
		select {
		case <-ch:
		case <-time.After(30 * time.Second):
			t.Fatalf("%s did not return", name)
		}
	}
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Close racing a Release that waits for a Touch: %v (want nil: Close must wait for the Release)", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Close did not return")
	}
}
