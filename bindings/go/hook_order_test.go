package afsm

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Two sessions go IDLE in one expiry batch, and the hook for the first
// IDLE heartbeats the other session. That heartbeat's IDLE -> ACTIVE must
// reach OnEvent after the other session's ACTIVE -> IDLE, which is still
// waiting in the batch: the engine orders a hook's calls after the events
// pending on the thread delivering to it, so hooks must run on that thread
// (README, Callbacks). Run on a goroutine of their own, the hooks saw the
// two changes reversed.
func TestHookCallsKeepTheBatchOrder(t *testing.T) {
	var now atomic.Int64
	now.Store(int64(1000 * time.Second))
	var mu sync.Mutex
	var changes = map[UUID][]State{}
	var m *Manager
	var ids [2]UUID
	var acted atomic.Bool
	cfg := &ManagerConfig{DefaultTimeout: time.Hour, IdleTimeout: time.Second, ManualReaper: true,
		Clock: func() int64 { return now.Load() }}
	cfg.OnEvent = func(e Event) {
		if e.Type != EventStateChanged {
			return
		}
		mu.Lock()
		changes[e.SessionID] = append(changes[e.SessionID], e.OldState, e.NewState)
		mu.Unlock()
		if e.NewState == StateIdle && !acted.Swap(true) {
			other := ids[0]
			if e.SessionID == other {
				other = ids[1]
			}
			if _, err := m.Heartbeat(context.Background(), other); err != nil {
				t.Errorf("heartbeat from OnEvent: %v", err)
			}
		}
	}
	var err error
	if m, err = NewManager(cfg); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for i := range ids {
		conn, err := NewV7()
		if err != nil {
			t.Fatal(err)
		}
		s, _, err := m.CreateSession(context.Background(), "u", "10.0.0.1", 1, conn, nil)
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = s.SessionID
		if _, err := m.Heartbeat(context.Background(), s.SessionID); err != nil {
			t.Fatal(err)
		}
	}
	now.Add(int64(1500 * time.Millisecond))
	if _, err := m.Advance(now.Load()); err != nil {
		t.Fatal(err)
	}
	if !acted.Load() {
		t.Fatal("no session went IDLE")
	}
	mu.Lock()
	defer mu.Unlock()
	for _, id := range ids {
		c := changes[id]
		// Each change starts where the one before it ended.
		for i := 2; i < len(c); i += 2 {
			if c[i] != c[i-1] {
				t.Errorf("session %v: changes out of order (old, new pairs): %v", id, c)
				break
			}
		}
	}
}
