package afsm_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"afsm.dev/afsm"
)

// The old service's walk-through, on the engine. A manual reaper and a
// virtual clock make expiry deterministic.
func Example() {
	var now int64 = 1e9 // virtual monotonic nanoseconds
	m, err := afsm.NewManager(&afsm.ManagerConfig{
		DefaultTimeout: 30 * time.Minute,
		ServerAddr:     "10.0.0.1:9000",
		ManualReaper:   true,
		Clock:          func() int64 { return now },
		OnEvent: func(e afsm.Event) {
			fmt.Printf("event: %s %s -> %s\n", e.Type, e.OldState, e.NewState)
		},
	})
	if err != nil {
		panic(err)
	}
	defer m.Close()
	ctx := context.Background()

	connID, _ := afsm.NewV7() // from the transport
	sess, _, err := m.CreateSession(ctx, "user123", "192.168.1.100", 54321, connID,
		map[string]string{"device": "mobile", "version": "1.0.0"})
	if err != nil {
		panic(err)
	}

	active := afsm.StateActive
	updated, _ := m.UpdateSession(ctx, sess.SessionID, &active, map[string]string{"version": "1.0.1"}, nil)
	fmt.Println(updated.State, updated.Metadata)

	now += int64(10 * time.Minute)
	remaining, _ := m.Heartbeat(ctx, sess.SessionID)
	fmt.Println("remaining:", remaining)

	sessions, total, _ := m.ListSessions(ctx, &afsm.SessionFilter{UserID: "user123", Limit: 10})
	fmt.Println("listed:", len(sessions), "of", total)

	now += int64(31 * time.Minute)
	_, err = m.GetSession(ctx, sess.SessionID)
	fmt.Println("expired:", errors.Is(err, afsm.ErrSessionExpired))
	expired, _ := m.Advance(now)
	fmt.Println("reaped:", expired)
	_, err = m.GetSession(ctx, sess.SessionID)
	fmt.Println("gone:", errors.Is(err, afsm.ErrSessionNotFound))

	// Output:
	// event: created any -> connecting
	// event: state_changed connecting -> active
	// active map[device:mobile version:1.0.1]
	// remaining: 30m0s
	// listed: 1 of 1
	// expired: true
	// event: expired active -> active
	// reaped: 1
	// gone: true
}

// A pinned Handle does per-packet work without a lookup.
func ExampleHandle() {
	m, _ := afsm.NewManager(&afsm.ManagerConfig{ManualReaper: true})
	defer m.Close()
	ctx := context.Background()
	sess, _, _ := m.CreateSession(ctx, "user123", "2001:db8::1", 443, afsm.MustParse(
		"019a5eba-1c84-7651-958a-8a6c86b4c79f"), nil)

	h, _ := m.Pin(ctx, sess.SessionID)
	defer h.Release()
	for i := 0; i < 3; i++ {
		_ = h.AddStats(afsm.Stats{PacketsSent: 1, BytesSent: 1200, CurrentRTTMs: 12})
	}
	got, _ := m.GetSessionByConnection(ctx, sess.ConnectionID)
	fmt.Println(got.ClientIP, got.Stats.PacketsSent, got.Stats.BytesSent, got.Stats.CurrentRTTMs)
	// Output: 2001:db8::1 3 3600 12
}

// Tokens: CreateSession returns one; the client presents it later. A
// rotation revokes the old ones, and a key rotation keeps the ring's
// older tokens valid until their key is removed.
func ExampleManager_ValidateToken() {
	key := make([]byte, afsm.KeySize) // in production: from a secret store, or KeyFile
	m, err := afsm.NewManager(&afsm.ManagerConfig{ManualReaper: true, Key: key, KeyID: 1})
	if err != nil {
		panic(err)
	}
	defer m.Close()
	ctx := context.Background()

	sess, token, _ := m.CreateSessionWithOptions(ctx, &afsm.CreateOptions{UserID: "user123",
		ClientIP: "192.168.1.100", ClientPort: 54321, ConnectionID: afsm.MustParse(
			"019a5eba-1c84-7651-958a-8a6c86b4c79f"), BindToken: true})

	got, err := m.ValidateToken(ctx, token, "192.168.1.100")
	fmt.Println("valid:", err == nil, got.UserID)
	_, err = m.ValidateToken(ctx, token, "10.0.0.9")
	fmt.Println("other IP:", errors.Is(err, afsm.ErrIPMismatch), errors.Is(err, afsm.ErrInvalidToken))

	fresh, _ := m.RotateToken(ctx, sess.SessionID)
	_, err = m.ValidateToken(ctx, token, "192.168.1.100")
	fmt.Println("old token revoked:", errors.Is(err, afsm.ErrTokenRevoked))

	newKey := make([]byte, afsm.KeySize)
	newKey[0] = 1
	_ = m.AddKey(2, newKey)
	_ = m.UseKey(2) // seals from now on; key 1 still opens
	_, err = m.ValidateToken(ctx, fresh, "")
	fmt.Println("key 1 token still valid:", err == nil)
	_ = m.RemoveKey(1)
	_, err = m.ValidateToken(ctx, fresh, "")
	fmt.Println("after removing key 1:", errors.Is(err, afsm.ErrKeyRemoved))

	// Output:
	// valid: true user123
	// other IP: true true
	// old token revoked: true
	// key 1 token still valid: true
	// after removing key 1: true
}
