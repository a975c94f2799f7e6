package afsm

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// Close from inside OnEvent used to deadlock: the call that fired the event
// holds a gate stripe that Close waits for. It must return an error at once
// and leave the Manager usable.
func TestCloseFromOnEventReturnsError(t *testing.T) {
	var (
		m    *Manager
		mu   sync.Mutex
		errs []error
	)
	clk := newVClock()
	m = newManager(t, &ManagerConfig{
		ManualReaper:   true,
		Clock:          clk.now,
		DefaultTimeout: time.Second,
		OnEvent: func(Event) {
			err := m.Close()
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		},
	})
	done := make(chan error, 1)
	go func() {
		ctx := context.Background()
		s, _, err := m.CreateSession(ctx, "u", "10.0.0.1", 1, mustV7(t), nil)
		if err != nil {
			done <- err
			return
		}
		// The expiry path too: Advance's goroutine holds the gate.
		clk.add(2 * time.Second)
		if _, err := m.Tick(); err != nil {
			done <- err
			return
		}
		_, err = m.GetSession(ctx, s.SessionID)
		if !errors.Is(err, ErrSessionNotFound) {
			done <- err
			return
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Close from OnEvent deadlocked")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(errs) != 2 {
		t.Fatalf("OnEvent ran %d times, want 2 (created, expired)", len(errs))
	}
	for _, err := range errs {
		if !errors.Is(err, ErrCloseInCallback) {
			t.Fatalf("Close in OnEvent: %v, want ErrCloseInCallback", err)
		}
	}
	if _, err := m.Counts(); err != nil {
		t.Fatalf("the Manager must stay open: %v", err)
	}
}

// Goroutines racing Close either finish their call or get ErrClosed,
// round after round.
func TestCloseRacingCalls(t *testing.T) {
	const rounds, workers = 100, 4
	ctx := context.Background()
	for r := 0; r < rounds; r++ {
		m, err := NewManager(&ManagerConfig{ShardCount: 4})
		if err != nil {
			t.Fatal(err)
		}
		s, _, err := m.CreateSession(ctx, "u", "10.0.0.1", 1, mustV7(t), nil)
		if err != nil {
			t.Fatal(err)
		}
		var started, finished sync.WaitGroup
		started.Add(workers)
		finished.Add(workers)
		errs := make([]error, workers)
		for w := 0; w < workers; w++ {
			go func(w int) {
				defer finished.Done()
				first := true
				for {
					_, err := m.Heartbeat(ctx, s.SessionID)
					if err == nil {
						_, err = m.GetSession(ctx, s.SessionID)
					}
					if err == nil && w%2 == 0 {
						_, _, err = m.ListSessions(ctx, &SessionFilter{Limit: 10})
					}
					if first {
						first = false
						started.Done()
					}
					if err != nil {
						errs[w] = err
						return
					}
				}
			}(w)
		}
		started.Wait()
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
		finished.Wait()
		for _, err := range errs {
			if !errors.Is(err, ErrClosed) {
				t.Fatalf("round %d: %v, want ErrClosed", r, err)
			}
		}
	}
}
