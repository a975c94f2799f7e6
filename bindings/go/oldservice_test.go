package afsm

import (
	"context"
	"testing"
)

// The service this replaces (internal/session, TestManager) asserts that a
// heartbeat marks the session active ("Mark as active if not already"):
// create, heartbeat, get, state == active. The same holds here for a
// connecting session, for an idle one, and for a batch of them.
func TestOldServiceHeartbeatMarksActive(t *testing.T) {
	ctx := context.Background()
	m := newManager(t, &ManagerConfig{ManualReaper: true})
	conn, err := NewV7()
	if err != nil {
		t.Fatal(err)
	}
	s, _, err := m.CreateSession(ctx, "user123", "192.168.1.100", 54321, conn, nil)
	if err != nil {
		t.Fatalf("CreateSession: %v", err)
	}
	if s.State != StateConnecting {
		t.Fatalf("new session state = %v, want connecting", s.State)
	}
	remaining, err := m.Heartbeat(ctx, s.SessionID)
	if err != nil || remaining <= 0 {
		t.Fatalf("Heartbeat = %v, %v", remaining, err)
	}
	got, err := m.GetSession(ctx, s.SessionID)
	if err != nil {
		t.Fatalf("GetSession: %v", err)
	}
	if got.State != StateActive {
		t.Fatalf("state after heartbeat = %v, want active", got.State)
	}

	idle := StateIdle
	if _, err := m.UpdateSession(ctx, s.SessionID, &idle, nil, nil); err != nil {
		t.Fatalf("UpdateSession(idle): %v", err)
	}
	conn2, _ := NewV7()
	s2, _, err := m.CreateSession(ctx, "user123", "192.168.1.101", 54322, conn2, nil)
	if err != nil {
		t.Fatalf("CreateSession: %v", err)
	}
	_, errs, err := m.HeartbeatMany(ctx, []UUID{s.SessionID, s2.SessionID})
	if err != nil || errs[0] != nil || errs[1] != nil {
		t.Fatalf("HeartbeatMany = %v, %v", errs, err)
	}
	for _, id := range []UUID{s.SessionID, s2.SessionID} {
		got, err := m.GetSession(ctx, id)
		if err != nil || got.State != StateActive {
			t.Fatalf("state after batch heartbeat = %v (%v), want active", got.State, err)
		}
	}
}
