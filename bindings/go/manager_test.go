package afsm

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// vclock is a virtual engine clock: tests move time, never sleep.
type vclock struct{ ns atomic.Int64 }

func newVClock() *vclock {
	c := &vclock{}
	c.ns.Store(1_000_000_000)
	return c
}

func (c *vclock) now() int64                { return c.ns.Load() }
func (c *vclock) add(d time.Duration) int64 { return c.ns.Add(int64(d)) }

// eventLog collects events; OnEvent may run on several goroutines.
type eventLog struct {
	mu     sync.Mutex
	events []Event
}

func (l *eventLog) on(e Event) {
	l.mu.Lock()
	l.events = append(l.events, e)
	l.mu.Unlock()
}

func (l *eventLog) take() []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.events
	l.events = nil
	return out
}

func newManager(t testing.TB, cfg *ManagerConfig) *Manager {
	t.Helper()
	m, err := NewManager(cfg)
	if err != nil {
		t.Fatalf("NewManager: %v", err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return m
}

func newVirtual(t testing.TB, timeout time.Duration) (*Manager, *vclock, *eventLog) {
	clk := newVClock()
	ev := &eventLog{}
	m := newManager(t, &ManagerConfig{
		DefaultTimeout: timeout,
		ManualReaper:   true,
		Clock:          clk.now,
		OnEvent:        ev.on,
		ServerAddr:     "10.0.0.1:9000",
		ShardCount:     4,
	})
	return m, clk, ev
}

func mustV7(t testing.TB) UUID {
	t.Helper()
	u, err := NewV7()
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func mustCreate(t testing.TB, m *Manager, user string, md map[string]string) *Session {
	t.Helper()
	s, tok, err := m.CreateSession(context.Background(), user, "192.168.1.100", 54321, mustV7(t), md)
	if err != nil {
		t.Fatalf("CreateSession: %v", err)
	}
	if !strings.HasPrefix(tok, "v1.") || len(tok) > 120 {
		t.Fatalf("token %q", tok)
	}
	return s
}

func wantErr(t testing.TB, err error, targets ...error) {
	t.Helper()
	if err == nil {
		t.Fatalf("got nil error, want %v", targets)
	}
	for _, target := range targets {
		if !errors.Is(err, target) {
			t.Fatalf("error %v does not match %v", err, target)
		}
	}
}

func TestUUID(t *testing.T) {
	prev := mustV7(t)
	for i := 0; i < 1000; i++ {
		u := mustV7(t)
		if string(u[:]) <= string(prev[:]) {
			t.Fatalf("NewV7 not increasing: %v after %v", u, prev)
		}
		if u[6]>>4 != 7 || u[8]>>6 != 2 {
			t.Fatalf("not a v7 UUID: %v", u)
		}
		prev = u
	}
	s := "019A5EBA-1c84-7652-9ee0-f146556b141f"
	u, err := Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	if u.String() != strings.ToLower(s) {
		t.Fatalf("round trip: %s", u)
	}
	if MustParse(u.String()) != u {
		t.Fatal("MustParse")
	}
	for _, bad := range []string{"", "019a5eba1c8476529ee0f146556b141f", "019a5eba-1c84-7652-9ee0-f146556b141g",
		"019a5eba-1c84-7652-9ee0_f146556b141f", "019a5eba-1c84-7652-9ee0-f146556b141f0"} {
		_, err := Parse(bad)
		wantErr(t, err, ErrInvalidUUID, ErrInvalidArgument)
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("MustParse did not panic")
			}
		}()
		MustParse("nope")
	}()
	var v UUID
	if !v.IsNil() || !Nil.IsNil() || u.IsNil() {
		t.Fatal("IsNil")
	}
	text, _ := u.MarshalText()
	if err := v.UnmarshalText(text); err != nil || v != u {
		t.Fatal("text round trip")
	}
	if err := v.UnmarshalText([]byte("x")); err == nil {
		t.Fatal("UnmarshalText accepted garbage")
	}
}

func TestStateAndNames(t *testing.T) {
	want := map[State]string{StateAny: "any", StateConnecting: "connecting", StateActive: "active",
		StateIdle: "idle", StateDisconnecting: "disconnecting", StateClosed: "closed", 42: "State(42)"}
	for s, name := range want {
		if s.String() != name {
			t.Errorf("%d: %q, want %q", s, s.String(), name)
		}
	}
	for e, name := range map[EventType]string{EventCreated: "created", EventStateChanged: "state_changed",
		EventExpired: "expired", EventDeleted: "deleted", 9: "EventType(9)"} {
		if e.String() != name {
			t.Errorf("%q, want %q", e.String(), name)
		}
	}
	for l, name := range map[LogLevel]string{LogDebug: "debug", LogInfo: "info", LogWarn: "warn",
		LogError: "error", 5: "LogLevel(5)"} {
		if l.String() != name {
			t.Errorf("%q, want %q", l.String(), name)
		}
	}
	if Version() == "" {
		t.Fatal("no version")
	}
}

// Every engine status maps to its sentinel(s), carries its name, and
// matches nothing else.
func TestErrorMapping(t *testing.T) {
	all := []error{ErrInvalidArgument, ErrTooLong, ErrInvalidUUID, ErrInvalidIP, ErrVersion, ErrOutOfMemory,
		ErrSessionNotFound, ErrSessionExpired, ErrAlreadyExists, ErrInvalidTransition, ErrSessionClosed,
		ErrLimitExceeded, ErrBusy, ErrInvalidToken, ErrTokenMalformed, ErrTokenForged, ErrUnknownKey, ErrKeyRemoved, ErrTokenRevoked,
		ErrIPMismatch, ErrKeyFile, ErrKeyNotFound,
		ErrUnavailable, ErrInternal, ErrClosed}
	cases := []struct {
		status int
		name   string
		want   []error
	}{
		{-1, "AFSM_ENULL", []error{ErrInvalidArgument}},
		{-2, "AFSM_EVERSION", []error{ErrVersion, ErrInvalidArgument}},
		{-3, "AFSM_EINVAL", []error{ErrInvalidArgument}},
		{-4, "AFSM_ETOOLONG", []error{ErrTooLong, ErrInvalidArgument}},
		{-5, "AFSM_EUUID", []error{ErrInvalidUUID, ErrInvalidArgument}},
		{-6, "AFSM_EIP", []error{ErrInvalidIP, ErrInvalidArgument}},
		{-7, "AFSM_ENOMEM", []error{ErrOutOfMemory}},
		{-8, "AFSM_ENOTFOUND", []error{ErrSessionNotFound}},
		{-9, "AFSM_EEXPIRED", []error{ErrSessionExpired}},
		{-10, "AFSM_EEXISTS", []error{ErrAlreadyExists}},
		{-11, "AFSM_ETRANSITION", []error{ErrInvalidTransition}},
		{-12, "AFSM_ECLOSED", []error{ErrSessionClosed}},
		{-13, "AFSM_ELIMIT", []error{ErrLimitExceeded}},
		{-14, "AFSM_EBUFFER", []error{ErrInternal}},
		{-15, "AFSM_EBUSY", []error{ErrBusy}},
		{-16, "AFSM_ETOKEN", []error{ErrTokenForged, ErrInvalidToken}},
		{-17, "AFSM_ETOKENKEY", []error{ErrUnknownKey, ErrInvalidToken}},
		{-18, "AFSM_EREVOKED", []error{ErrTokenRevoked, ErrInvalidToken}},
		{-19, "AFSM_EIPMISMATCH", []error{ErrIPMismatch, ErrInvalidToken}},
		{-20, "AFSM_EKEYFILE", []error{ErrKeyFile}},
		{-21, "AFSM_EUNAVAILABLE", []error{ErrUnavailable}},
		{-22, "AFSM_EINTERNAL", []error{ErrInternal}},
		{-23, "AFSM_ETOKENFORMAT", []error{ErrTokenMalformed, ErrInvalidToken}},
		{-24, "AFSM_EKEYREMOVED", []error{ErrKeyRemoved, ErrInvalidToken}},
		{-99, "AFSM_UNKNOWN", []error{ErrInternal}},
	}
	for _, c := range cases {
		err := errorFromCode("Op", c.status)
		var e *Error
		if !errors.As(err, &e) || e.Status != c.status || e.Name != c.name || e.Msg == "" {
			t.Fatalf("%d: %#v", c.status, err)
		}
		if !strings.Contains(err.Error(), c.name) || !strings.HasPrefix(err.Error(), "afsm: Op: ") {
			t.Fatalf("%d: message %q", c.status, err.Error())
		}
		for _, s := range all {
			in := false
			for _, w := range c.want {
				in = in || w == s
			}
			if errors.Is(err, s) != in {
				t.Fatalf("%s: errors.Is(%v) = %v", c.name, s, !in)
			}
		}
	}
	if errorFromCode("Op", 0) != nil || tokenErrorFromCode("Op", 0) != nil {
		t.Fatal("AFSM_OK is an error")
	}
	// From ValidateToken, a session failure is a token failure too; from
	// elsewhere it is not.
	for _, c := range []struct {
		status int
		want   error
	}{{-8, ErrSessionNotFound}, {-9, ErrSessionExpired}, {-12, ErrSessionClosed}} {
		wantErr(t, tokenErrorFromCode("ValidateToken", c.status), c.want, ErrInvalidToken)
		if errors.Is(errorFromCode("GetSession", c.status), ErrInvalidToken) {
			t.Fatalf("%d from GetSession matches ErrInvalidToken", c.status)
		}
	}
	if err := tokenErrorFromCode("ValidateToken", -6); errors.Is(err, ErrInvalidToken) || !errors.Is(err, ErrInvalidIP) {
		t.Fatalf("a malformed client IP: %v", err)
	}
}

func TestNewManagerConfig(t *testing.T) {
	m := newManager(t, nil) // all defaults, reaper thread
	if _, err := m.Counts(); err != nil {
		t.Fatal(err)
	}
	for _, cfg := range []*ManagerConfig{
		{ShardCount: 3}, {ShardCount: -1}, {DefaultTimeout: -time.Second}, {CapacityHint: -1},
		{LogLevel: 15}, {ServerAddr: "a\x00b"},
	} {
		_, err := NewManager(cfg)
		wantErr(t, err, ErrInvalidArgument)
	}
	_, err := NewManager(&ManagerConfig{ServerAddr: strings.Repeat("a", 256)})
	wantErr(t, err, ErrTooLong)
	logged := &testLogger{}
	m2 := newManager(t, &ManagerConfig{Logger: logged, LogLevel: LogDebug, ShardCount: 1, CapacityHint: 10,
		DefaultTimeout: time.Minute, CleanupInterval: 10 * time.Millisecond, TickInterval: time.Millisecond,
		IdleTimeout: time.Hour, MaxLifetime: 2 * time.Hour})
	mustCreate(t, m2, "u", nil)
	logged.mu.Lock()
	defer logged.mu.Unlock()
	for _, line := range logged.lines {
		if strings.Contains(line, "user_id u") { // the engine logs creates with their fields
			return
		}
	}
	t.Fatalf("no log line for the create: %q", logged.lines)
}

type testLogger struct {
	mu    sync.Mutex
	lines []string
}

func (l *testLogger) Log(level LogLevel, msg string, fields []LogField) {
	l.mu.Lock()
	l.lines = append(l.lines, fmt.Sprint(level, msg, fields))
	l.mu.Unlock()
}

func TestCreateGet(t *testing.T) {
	m, clk, _ := newVirtual(t, time.Minute)
	ctx := context.Background()
	conn := mustV7(t)
	md := map[string]string{"device": "mobile", "version": "1.0.0", "empty": ""}
	s, _, err := m.CreateSession(ctx, "user123", "2001:DB8:0:0:0:0:0:1", 54321, conn, md)
	if err != nil {
		t.Fatal(err)
	}
	if s.UserID != "user123" || s.ClientIP != "2001:db8::1" || s.ClientPort != 54321 ||
		s.ConnectionID != conn || s.ServerAddr != "10.0.0.1:9000" || s.State != StateConnecting ||
		s.Timeout != time.Minute || s.SessionID.IsNil() || len(s.Metadata) != 3 || s.Stats != (Stats{}) {
		t.Fatalf("created %+v", s)
	}
	if d := s.ExpiresAt.Sub(s.LastActiveAt); d != time.Minute {
		t.Fatalf("expires - last active = %v", d)
	}
	if s.CreatedAt.IsZero() || time.Since(s.CreatedAt) > time.Hour {
		t.Fatalf("created at %v", s.CreatedAt)
	}
	for _, get := range []func() (*Session, error){
		func() (*Session, error) { return m.GetSession(ctx, s.SessionID) },
		func() (*Session, error) { return m.GetSessionByConnection(ctx, conn) },
	} {
		g, err := get()
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(g) != fmt.Sprint(s) {
			t.Fatalf("get\n%+v\nwant\n%+v", g, s)
		}
	}
	v4, _, err := m.CreateSessionWithOptions(ctx, &CreateOptions{UserID: "u", ClientIP: "::ffff:1.2.3.4",
		ClientPort: 0, ConnectionID: mustV7(t), Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if v4.ClientIP != "1.2.3.4" || v4.Timeout != 5*time.Second || v4.Metadata == nil {
		t.Fatalf("%+v", v4)
	}
	_, err = m.GetSession(ctx, mustV7(t))
	wantErr(t, err, ErrSessionNotFound)
	_, err = m.GetSessionByConnection(ctx, mustV7(t))
	wantErr(t, err, ErrSessionNotFound)

	// Expired before the reaper runs: reported, not returned.
	clk.add(6 * time.Second)
	_, err = m.GetSession(ctx, v4.SessionID)
	wantErr(t, err, ErrSessionExpired)
}

func TestCreateErrors(t *testing.T) {
	m, _, _ := newVirtual(t, time.Minute)
	ctx := context.Background()
	conn := mustV7(t)
	mustOK := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	_, _, err := m.CreateSession(ctx, "u", "1.2.3.4", 1, conn, nil)
	mustOK(err)
	tooMany := map[string]string{}
	for i := 0; i < 65; i++ {
		tooMany[fmt.Sprint("k", i)] = "v"
	}
	cases := []struct {
		name    string
		o       *CreateOptions
		targets []error
	}{
		{"nil options", nil, []error{ErrInvalidArgument}},
		{"empty user", &CreateOptions{ClientIP: "1.2.3.4", ConnectionID: mustV7(t)}, []error{ErrInvalidArgument}},
		{"long user", &CreateOptions{UserID: strings.Repeat("u", 257), ClientIP: "1.2.3.4",
			ConnectionID: mustV7(t)}, []error{ErrTooLong, ErrInvalidArgument}},
		{"NUL in user", &CreateOptions{UserID: "a\x00", ClientIP: "1.2.3.4", ConnectionID: mustV7(t)},
			[]error{ErrInvalidArgument}},
		{"bad ip", &CreateOptions{UserID: "u", ClientIP: "1.2.3.256", ConnectionID: mustV7(t)},
			[]error{ErrInvalidIP, ErrInvalidArgument}},
		{"empty ip", &CreateOptions{UserID: "u", ConnectionID: mustV7(t)}, []error{ErrInvalidIP}},
		{"port", &CreateOptions{UserID: "u", ClientIP: "1.2.3.4", ClientPort: 65536, ConnectionID: mustV7(t)},
			[]error{ErrInvalidArgument}},
		{"nil conn", &CreateOptions{UserID: "u", ClientIP: "1.2.3.4"}, []error{ErrInvalidUUID}},
		{"conn taken", &CreateOptions{UserID: "u", ClientIP: "1.2.3.4", ConnectionID: conn},
			[]error{ErrAlreadyExists}},
		{"65 keys", &CreateOptions{UserID: "u", ClientIP: "1.2.3.4", ConnectionID: mustV7(t),
			Metadata: tooMany}, []error{ErrTooLong}},
		{"metadata bytes", &CreateOptions{UserID: "u", ClientIP: "1.2.3.4", ConnectionID: mustV7(t),
			Metadata: map[string]string{"k": strings.Repeat("v", 4096)}}, []error{ErrTooLong}},
		{"NUL in key", &CreateOptions{UserID: "u", ClientIP: "1.2.3.4", ConnectionID: mustV7(t),
			Metadata: map[string]string{"a\x00b": "v"}}, []error{ErrInvalidArgument}},
		{"empty key", &CreateOptions{UserID: "u", ClientIP: "1.2.3.4", ConnectionID: mustV7(t),
			Metadata: map[string]string{"": "v"}}, []error{ErrInvalidArgument}},
		{"negative timeout", &CreateOptions{UserID: "u", ClientIP: "1.2.3.4", ConnectionID: mustV7(t),
			Timeout: -1}, []error{ErrInvalidArgument}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := m.CreateSessionWithOptions(ctx, c.o)
			wantErr(t, err, c.targets...)
		})
	}
	counts, err := m.Counts()
	mustOK(err)
	if counts.Total != 1 {
		t.Fatalf("failed creates left sessions: %+v", counts)
	}
	// The largest valid metadata fits in one crossing's buffer.
	big := map[string]string{}
	for i := 0; i < 64; i++ {
		big[fmt.Sprintf("k%02d", i)] = strings.Repeat("x", 4096/64-3)
	}
	s, _, err := m.CreateSession(ctx, "u", "1.2.3.4", 1, mustV7(t), big)
	mustOK(err)
	g, err := m.GetSession(ctx, s.SessionID)
	mustOK(err)
	if fmt.Sprint(g.Metadata) != fmt.Sprint(big) {
		t.Fatal("big metadata round trip")
	}
}

func TestUpdate(t *testing.T) {
	m, _, ev := newVirtual(t, time.Minute)
	ctx := context.Background()
	s := mustCreate(t, m, "u", map[string]string{"a": "1", "b": "2"})
	st := func(v State) *State { return &v }

	_, err := m.UpdateSession(ctx, s.SessionID, st(StateIdle), nil, nil)
	wantErr(t, err, ErrInvalidTransition)
	_, err = m.UpdateSession(ctx, s.SessionID, st(State(9)), nil, nil)
	wantErr(t, err, ErrInvalidArgument)
	_, err = m.UpdateSession(ctx, s.SessionID, st(StateAny), nil, nil)
	wantErr(t, err, ErrInvalidArgument)

	u, err := m.UpdateSession(ctx, s.SessionID, st(StateActive), map[string]string{"b": "3", "c": "4"},
		&Stats{PacketsSent: 10, BytesSent: 1000, CurrentRTTMs: 7})
	if err != nil {
		t.Fatal(err)
	}
	if u.State != StateActive || fmt.Sprint(u.Metadata) != "map[a:1 b:3 c:4]" || u.Stats.PacketsSent != 10 ||
		u.Stats.BytesSent != 1000 || u.Stats.CurrentRTTMs != 7 {
		t.Fatalf("updated %+v", u)
	}
	// A failed update changes nothing (all or nothing).
	_, err = m.UpdateSession(ctx, s.SessionID, st(StateConnecting), map[string]string{"z": "9"}, nil)
	wantErr(t, err, ErrInvalidTransition)
	_, err = m.UpdateSession(ctx, s.SessionID, nil, map[string]string{strings.Repeat("k", 256): "v"}, nil)
	wantErr(t, err, ErrInvalidArgument)
	g, _ := m.GetSession(ctx, s.SessionID)
	if fmt.Sprint(g.Metadata) != "map[a:1 b:3 c:4]" || g.State != StateActive {
		t.Fatalf("after failed update %+v", g)
	}
	r, err := m.ReplaceMetadata(ctx, s.SessionID, map[string]string{"only": "this"})
	if err != nil || fmt.Sprint(r.Metadata) != "map[only:this]" {
		t.Fatalf("replace %v %+v", err, r)
	}
	r, err = m.ReplaceMetadata(ctx, s.SessionID, nil)
	if err != nil || len(r.Metadata) != 0 || r.Metadata == nil {
		t.Fatalf("clear %v %+v", err, r)
	}
	if _, err := m.UpdateSession(ctx, s.SessionID, st(StateIdle), nil, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := m.UpdateSession(ctx, s.SessionID, nil, nil, nil); err != nil {
		t.Fatal("empty update:", err)
	}
	if _, err := m.ReplaceMetadata(ctx, s.SessionID, map[string]string{"k": "v"}); err != nil {
		t.Fatal(err)
	}
	c, err := m.UpdateSession(ctx, s.SessionID, st(StateClosed), nil, nil)
	if err != nil || c.State != StateClosed || c.Metadata["k"] != "v" {
		t.Fatalf("close %v %+v", err, c)
	}
	_, err = m.GetSession(ctx, s.SessionID)
	wantErr(t, err, ErrSessionNotFound)
	_, err = m.UpdateSession(ctx, s.SessionID, st(StateActive), nil, nil)
	wantErr(t, err, ErrSessionNotFound)
	_, err = m.ReplaceMetadata(ctx, mustV7(t), nil)
	wantErr(t, err, ErrSessionNotFound)

	var types []string
	for _, e := range ev.take() {
		types = append(types, fmt.Sprintf("%s:%s->%s", e.Type, e.OldState, e.NewState))
		if e.SessionID != s.SessionID || e.UserID != "u" || e.ConnectionID != s.ConnectionID {
			t.Fatalf("event %+v", e)
		}
	}
	want := "[created:any->connecting state_changed:connecting->active state_changed:active->idle " +
		"state_changed:idle->closed deleted:closed->closed]"
	if fmt.Sprint(types) != want {
		t.Fatalf("events %v\nwant   %s", types, want)
	}
}

func TestHeartbeatExpiryEvents(t *testing.T) {
	m, clk, ev := newVirtual(t, 30*time.Second)
	ctx := context.Background()
	a := mustCreate(t, m, "alice", nil)
	b := mustCreate(t, m, "bob", nil)
	ev.take()

	clk.add(20 * time.Second)
	left, err := m.Heartbeat(ctx, a.SessionID)
	if err != nil || left != 30*time.Second {
		t.Fatalf("heartbeat %v %v", left, err)
	}
	g, _ := m.GetSession(ctx, a.SessionID)
	if g.LastActiveAt.Sub(a.LastActiveAt) != 20*time.Second || g.ExpiresAt.Sub(g.LastActiveAt) != 30*time.Second {
		t.Fatalf("after heartbeat %+v", g)
	}
	// b's deadline passes; reads say so at once, the reaper removes it.
	now := clk.add(15 * time.Second)
	_, err = m.Heartbeat(ctx, b.SessionID)
	wantErr(t, err, ErrSessionExpired)
	n, err := m.Advance(now)
	if err != nil || n != 1 {
		t.Fatalf("Advance: %d %v", n, err)
	}
	_, err = m.GetSession(ctx, b.SessionID)
	wantErr(t, err, ErrSessionNotFound)
	_, err = m.Heartbeat(ctx, b.SessionID)
	wantErr(t, err, ErrSessionNotFound)
	if _, err := m.GetSession(ctx, a.SessionID); err != nil {
		t.Fatal(err)
	}
	// a's heartbeat made it active (the old service's semantics), then b expired.
	events := ev.take()
	if len(events) != 2 || events[0].Type != EventStateChanged || events[0].SessionID != a.SessionID ||
		events[0].OldState != StateConnecting || events[0].NewState != StateActive ||
		events[1].Type != EventExpired || events[1].SessionID != b.SessionID || events[1].UserID != "bob" {
		t.Fatalf("events %+v", events)
	}
	// Tick reads the (virtual) engine clock itself.
	clk.add(time.Minute)
	if now, _ := m.Now(); now != clk.now() {
		t.Fatal("Now")
	}
	if n, err := m.Tick(); err != nil || n != 1 {
		t.Fatalf("Tick %d %v", n, err)
	}
	if c, _ := m.Counts(); c.Total != 0 {
		t.Fatalf("counts %+v", c)
	}
	_, err = m.Advance(-1)
	wantErr(t, err, ErrInvalidArgument)

	// Per-session and default timeouts.
	if err := m.SetDefaultTimeout(time.Hour); err != nil {
		t.Fatal(err)
	}
	wantErr(t, m.SetDefaultTimeout(0), ErrInvalidArgument)
	wantErr(t, m.SetDefaultTimeout(-time.Second), ErrInvalidArgument)
	c := mustCreate(t, m, "carol", nil)
	if c.Timeout != time.Hour {
		t.Fatalf("timeout %v", c.Timeout)
	}
}

func TestMaxLifetime(t *testing.T) {
	clk := newVClock()
	m := newManager(t, &ManagerConfig{DefaultTimeout: time.Minute, MaxLifetime: 90 * time.Second,
		ManualReaper: true, Clock: clk.now})
	s := mustCreate(t, m, "u", nil)
	clk.add(50 * time.Second)
	left, err := m.Heartbeat(context.Background(), s.SessionID)
	if err != nil || left != 40*time.Second {
		t.Fatalf("capped heartbeat %v %v", left, err)
	}
}

func TestStatsAndHandles(t *testing.T) {
	m, clk, _ := newVirtual(t, time.Minute)
	ctx := context.Background()
	s := mustCreate(t, m, "u", nil)
	if err := m.AddStats(ctx, s.SessionID, Stats{PacketsSent: 1, PacketsReceived: 2, BytesSent: 3,
		BytesReceived: 4, Retransmissions: 5, CurrentRTTMs: 6}); err != nil {
		t.Fatal(err)
	}
	wantErr(t, m.AddStats(ctx, mustV7(t), Stats{}), ErrSessionNotFound)

	h, err := m.Pin(ctx, s.SessionID)
	if err != nil {
		t.Fatal(err)
	}
	hc, err := m.PinByConnection(ctx, s.ConnectionID)
	if err != nil {
		t.Fatal(err)
	}
	if h.SessionID() != s.SessionID || hc.SessionID() != s.SessionID {
		t.Fatal("handle ids")
	}
	if n, err := m.Pinned(); err != nil || n != 2 {
		t.Fatalf("Pinned = %d, %v; want 2", n, err)
	}
	if err := h.AddStats(Stats{PacketsSent: 10, CurrentRTTMs: 0}); err != nil {
		t.Fatal(err)
	}
	if err := hc.AddStats(Stats{BytesSent: 100, CurrentRTTMs: 9}); err != nil {
		t.Fatal(err)
	}
	clk.add(10 * time.Second)
	if left, err := h.Touch(); err != nil || left != time.Minute {
		t.Fatalf("Touch %v %v", left, err)
	}
	if left, err := hc.Heartbeat(); err != nil || left != time.Minute {
		t.Fatalf("Heartbeat %v %v", left, err)
	}
	g, _ := m.GetSession(ctx, s.SessionID)
	want := Stats{PacketsSent: 11, PacketsReceived: 2, BytesSent: 103, BytesReceived: 4, Retransmissions: 5,
		CurrentRTTMs: 9}
	if g.Stats != want {
		t.Fatalf("stats %+v", g.Stats)
	}
	// Release is idempotent; a released handle says ErrClosed.
	if err := hc.Release(); err != nil {
		t.Fatal(err)
	}
	if err := hc.Release(); err != nil {
		t.Fatal(err)
	}
	_, err = hc.Touch()
	wantErr(t, err, ErrClosed)
	wantErr(t, hc.AddStats(Stats{}), ErrClosed)
	// The handle outlives its session.
	if err := m.DeleteSession(ctx, s.SessionID, "bye"); err != nil {
		t.Fatal(err)
	}
	_, err = h.Touch()
	wantErr(t, err, ErrSessionNotFound)
	wantErr(t, h.AddStats(Stats{PacketsSent: 1}), ErrSessionNotFound)
	h.Release()
	if n, err := m.Pinned(); err != nil || n != 0 {
		t.Fatalf("Pinned after release = %d, %v; want 0", n, err)
	}

	_, err = m.Pin(ctx, s.SessionID)
	wantErr(t, err, ErrSessionNotFound)
	_, err = m.PinByConnection(ctx, s.ConnectionID)
	wantErr(t, err, ErrSessionNotFound)

	// An expired session's handle reports it.
	e := mustCreate(t, m, "u", nil)
	he, err := m.Pin(ctx, e.SessionID)
	if err != nil {
		t.Fatal(err)
	}
	defer he.Release()
	clk.add(2 * time.Minute)
	_, err = he.Touch()
	wantErr(t, err, ErrSessionExpired)
	wantErr(t, m.AddStats(ctx, e.SessionID, Stats{PacketsSent: 1}), ErrSessionExpired)
	_, err = m.Pin(ctx, e.SessionID)
	wantErr(t, err, ErrSessionExpired)
}

// Close releases handles still pinned; they then report ErrClosed.
func TestCloseReleasesHandles(t *testing.T) {
	m, err := NewManager(&ManagerConfig{ManualReaper: true})
	if err != nil {
		t.Fatal(err)
	}
	s := mustCreate(t, m, "u", nil)
	h, err := m.Pin(context.Background(), s.SessionID)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = h.Touch()
	wantErr(t, err, ErrClosed)
	if err := h.Release(); err != nil {
		t.Fatal(err)
	}
}

func TestBatches(t *testing.T) {
	m, clk, _ := newVirtual(t, time.Minute)
	ctx := context.Background()
	a := mustCreate(t, m, "u", map[string]string{"k": "a"})
	b := mustCreate(t, m, "u", nil)
	missing := mustV7(t)
	ids := []UUID{a.SessionID, missing, b.SessionID}

	got, errs, err := m.GetMany(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	if got[0] == nil || got[0].Metadata["k"] != "a" || got[1] != nil || got[2] == nil ||
		got[2].SessionID != b.SessionID || errs[0] != nil || errs[2] != nil {
		t.Fatalf("GetMany %+v %v", got, errs)
	}
	wantErr(t, errs[1], ErrSessionNotFound)

	deltas := []Stats{{PacketsSent: 1}, {PacketsSent: 2}, {PacketsSent: 3, CurrentRTTMs: 4}}
	errs, err = m.AddStatsMany(ctx, ids, deltas)
	if err != nil || errs[0] != nil || errs[2] != nil {
		t.Fatal(err, errs)
	}
	wantErr(t, errs[1], ErrSessionNotFound)
	_, err = m.AddStatsMany(ctx, ids, deltas[:2])
	wantErr(t, err, ErrInvalidArgument)

	clk.add(30 * time.Second)
	left, errs, err := m.HeartbeatMany(ctx, ids)
	if err != nil || left[0] != time.Minute || left[1] != 0 || left[2] != time.Minute {
		t.Fatal(left, errs, err)
	}
	wantErr(t, errs[1], ErrSessionNotFound)
	g, _ := m.GetSession(ctx, b.SessionID)
	if g.Stats.PacketsSent != 3 || g.Stats.CurrentRTTMs != 4 {
		t.Fatalf("%+v", g.Stats)
	}
	// Empty batches are fine.
	if s, e, err := m.GetMany(ctx, nil); err != nil || len(s) != 0 || len(e) != 0 {
		t.Fatal("empty GetMany")
	}
	if _, _, err := m.HeartbeatMany(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := m.AddStatsMany(ctx, nil, nil); err != nil {
		t.Fatal(err)
	}
}

func TestListSessions(t *testing.T) {
	m, clk, _ := newVirtual(t, time.Minute)
	ctx := context.Background()
	var all []*Session
	for i := 0; i < 30; i++ {
		user := []string{"alice", "bob", "carol"}[i%3]
		all = append(all, mustCreate(t, m, user, map[string]string{"i": fmt.Sprint(i)}))
		clk.add(time.Millisecond) // creation times come from the (virtual) engine clock
	}
	active := StateActive
	for _, s := range all[:5] {
		if _, err := m.UpdateSession(ctx, s.SessionID, &active, nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	ids := func(ss []*Session) string {
		var b strings.Builder
		for _, s := range ss {
			b.WriteString(s.Metadata["i"] + " ")
		}
		return b.String()
	}

	got, total, err := m.ListSessions(ctx, nil) // the old service panicked here
	if err != nil || total != 30 || ids(got) != ids(all) {
		t.Fatalf("nil filter: %d %v %s", total, err, ids(got))
	}
	got, total, err = m.ListSessions(ctx, &SessionFilter{UserID: "bob", Limit: 3, Offset: 2})
	if err != nil || total != 10 || ids(got) != "7 10 13 " {
		t.Fatalf("bob: %d %v %s", total, err, ids(got))
	}
	got, total, err = m.ListSessions(ctx, &SessionFilter{State: StateActive})
	if err != nil || total != 5 || ids(got) != "0 1 2 3 4 " {
		t.Fatalf("active: %d %v %s", total, err, ids(got))
	}
	got, _, err = m.ListSessions(ctx, &SessionFilter{CreatedAfter: all[9].CreatedAt.Add(-1),
		CreatedBefore: all[12].CreatedAt.Add(1)})
	if err != nil || !strings.HasPrefix(ids(got), "9 ") || !strings.HasSuffix(ids(got), " 12 ") {
		t.Fatalf("window: %v %s", err, ids(got))
	}
	// Cursor paging visits everything once.
	var seen []*Session
	f := &SessionFilter{Limit: 7}
	for {
		p, err := m.ListSessionsPage(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		if p.Total != 30 {
			t.Fatalf("total %d", p.Total)
		}
		seen = append(seen, p.Sessions...)
		if p.NextCursor.IsNil() {
			break
		}
		f.Cursor = p.NextCursor
	}
	if ids(seen) != ids(all) {
		t.Fatalf("paged %s", ids(seen))
	}
	got, total, err = m.ListSessions(ctx, &SessionFilter{UserID: "nobody"})
	if err != nil || total != 0 || got == nil || len(got) != 0 {
		t.Fatalf("nobody: %v %d %v", got, total, err)
	}
	for _, bad := range []*SessionFilter{{Limit: -1}, {Offset: -1}, {State: 6}} {
		_, _, err := m.ListSessions(ctx, bad)
		wantErr(t, err, ErrInvalidArgument)
	}
	_, _, err = m.ListSessions(ctx, &SessionFilter{UserID: strings.Repeat("u", 300)})
	wantErr(t, err, ErrTooLong)

	// Expired sessions are skipped.
	clk.add(2 * time.Minute)
	got, total, err = m.ListSessions(ctx, nil)
	if err != nil || total != 0 || len(got) != 0 {
		t.Fatalf("after expiry: %d %d %v", len(got), total, err)
	}
}

// Limit 0 pages through the engine internally, past one page's size.
func TestListAllPagesInternally(t *testing.T) {
	m := newManager(t, &ManagerConfig{ManualReaper: true})
	const n = listPageMax + 1000
	for i := 0; i < n; i++ {
		mustCreate(t, m, "u", nil)
	}
	got, total, err := m.ListSessions(context.Background(), &SessionFilter{})
	if err != nil || total != n || len(got) != n {
		t.Fatalf("%d of %d: %v", len(got), total, err)
	}
	got, _, err = m.ListSessions(context.Background(), &SessionFilter{Limit: 10500, Offset: 10})
	if err != nil || len(got) != n-10 {
		t.Fatalf("%d: %v", len(got), err)
	}
}

func TestDelete(t *testing.T) {
	m, _, ev := newVirtual(t, time.Minute)
	ctx := context.Background()
	a := mustCreate(t, m, "alice", nil)
	mustCreate(t, m, "bob", nil)
	mustCreate(t, m, "bob", nil)
	ev.take()
	if err := m.DeleteSession(ctx, a.SessionID, "user logout"); err != nil {
		t.Fatal(err)
	}
	wantErr(t, m.DeleteSession(ctx, a.SessionID, ""), ErrSessionNotFound)
	wantErr(t, m.DeleteSession(ctx, a.SessionID, strings.Repeat("r", 257)), ErrTooLong)
	n, err := m.DeleteUserSessions(ctx, "bob", "")
	if err != nil || n != 2 {
		t.Fatalf("%d %v", n, err)
	}
	if n, err := m.DeleteUserSessions(ctx, "bob", "again"); err != nil || n != 0 {
		t.Fatalf("%d %v", n, err)
	}
	_, err = m.DeleteUserSessions(ctx, "", "")
	wantErr(t, err, ErrInvalidArgument)
	_, err = m.DeleteUserSessions(ctx, strings.Repeat("u", 257), "")
	wantErr(t, err, ErrTooLong)
	_, err = m.DeleteUserSessions(ctx, "bob", strings.Repeat("r", 257))
	wantErr(t, err, ErrTooLong)
	var reasons []string
	for _, e := range ev.take() {
		if e.Type != EventDeleted {
			t.Fatalf("%+v", e)
		}
		reasons = append(reasons, e.Reason)
	}
	if fmt.Sprint(reasons) != "[user logout deleted deleted]" {
		t.Fatalf("reasons %v", reasons)
	}
	st, err := m.GetStats(ctx)
	if err != nil || st.Sessions != 0 || st.Deleted[DeleteRequested] != 1 || st.Deleted[DeleteUser] != 2 {
		t.Fatal(st, err)
	}
}

func TestContextAndClose(t *testing.T) {
	m, err := NewManager(&ManagerConfig{ManualReaper: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := mustCreate(t, m, "u", nil)
	cancel()
	id := s.SessionID
	calls := map[string]func(context.Context) error{
		"CreateSession": func(c context.Context) error {
			_, _, err := m.CreateSession(c, "u", "1.2.3.4", 1, mustV7(t), nil)
			return err
		},
		"GetSession":             func(c context.Context) error { _, err := m.GetSession(c, id); return err },
		"GetSessionByConnection": func(c context.Context) error { _, err := m.GetSessionByConnection(c, id); return err },
		"UpdateSession":          func(c context.Context) error { _, err := m.UpdateSession(c, id, nil, nil, nil); return err },
		"ReplaceMetadata":        func(c context.Context) error { _, err := m.ReplaceMetadata(c, id, nil); return err },
		"Heartbeat":              func(c context.Context) error { _, err := m.Heartbeat(c, id); return err },
		"AddStats":               func(c context.Context) error { return m.AddStats(c, id, Stats{}) },
		"DeleteSession":          func(c context.Context) error { return m.DeleteSession(c, id, "") },
		"DeleteUserSessions":     func(c context.Context) error { _, err := m.DeleteUserSessions(c, "u", ""); return err },
		"ListSessions":           func(c context.Context) error { _, _, err := m.ListSessions(c, nil); return err },
		"GetStats":               func(c context.Context) error { _, err := m.GetStats(c); return err },
		"Pin":                    func(c context.Context) error { _, err := m.Pin(c, id); return err },
		"PinByConnection":        func(c context.Context) error { _, err := m.PinByConnection(c, id); return err },
		"GetMany":                func(c context.Context) error { _, _, err := m.GetMany(c, []UUID{id}); return err },
		"HeartbeatMany":          func(c context.Context) error { _, _, err := m.HeartbeatMany(c, []UUID{id}); return err },
		"AddStatsMany": func(c context.Context) error {
			_, err := m.AddStatsMany(c, []UUID{id}, []Stats{{}})
			return err
		},
	}
	for name, call := range calls {
		if err := call(ctx); !errors.Is(err, context.Canceled) {
			t.Fatalf("%s with a cancelled context: %v", name, err)
		}
	}
	if _, err := m.GetSession(context.Background(), id); err != nil {
		t.Fatal("a cancelled call changed the engine:", err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil { // the old service panicked here
		t.Fatal("second Close:", err)
	}
	for name, call := range calls {
		if err := call(context.Background()); !errors.Is(err, ErrClosed) {
			t.Fatalf("%s after Close: %v", name, err)
		}
	}
	for name, err := range map[string]error{
		"Counts":            func() error { _, err := m.Counts(); return err }(),
		"Advance":           func() error { _, err := m.Advance(0); return err }(),
		"Tick":              func() error { _, err := m.Tick(); return err }(),
		"Now":               func() error { _, err := m.Now(); return err }(),
		"SetDefaultTimeout": m.SetDefaultTimeout(time.Second),
	} {
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("%s after Close: %v", name, err)
		}
	}
}

// Returned sessions are copies, and the caller's map is copied in.
func TestNoAliasing(t *testing.T) {
	m, _, _ := newVirtual(t, time.Minute)
	ctx := context.Background()
	md := map[string]string{"a": "1"}
	s := mustCreate(t, m, "u", md)
	md["a"] = "changed"
	md["b"] = "added"
	s.Metadata["a"] = "mutated"
	s.UserID = "mallory"
	s.Stats.PacketsSent = 99
	g1, _ := m.GetSession(ctx, s.SessionID)
	g1.Metadata["x"] = "y"
	g2, _ := m.GetSession(ctx, s.SessionID)
	if fmt.Sprint(g2.Metadata) != "map[a:1]" || g2.UserID != "u" || g2.Stats.PacketsSent != 0 || g1 == g2 {
		t.Fatalf("aliased: %+v", g2)
	}
	up := map[string]string{"c": "3"}
	u, _ := m.UpdateSession(ctx, s.SessionID, nil, up, nil)
	up["c"] = "changed"
	u.Metadata["c"] = "mutated"
	g3, _ := m.GetSession(ctx, s.SessionID)
	if g3.Metadata["c"] != "3" {
		t.Fatalf("aliased update: %+v", g3)
	}
}

// OnEvent may call back into the Manager (it runs inside the call that
// fired it) without deadlocking.
func TestEventReentrancy(t *testing.T) {
	var m *Manager
	var got atomic.Int32
	m = newManager(t, &ManagerConfig{ManualReaper: true, OnEvent: func(e Event) {
		if e.Type == EventCreated {
			if s, err := m.GetSession(context.Background(), e.SessionID); err == nil && s.UserID == e.UserID {
				got.Add(1)
			}
		}
	}})
	mustCreate(t, m, "u", nil)
	if got.Load() != 1 {
		t.Fatal("re-entrant GetSession from OnEvent failed")
	}
}

// A panicking OnEvent must not cross the C frames; it is reported to the
// Logger instead.
func TestEventPanicRecovered(t *testing.T) {
	logger := &testLogger{}
	m := newManager(t, &ManagerConfig{ManualReaper: true, Logger: logger, OnEvent: func(Event) { panic("boom") }})
	mustCreate(t, m, "u", nil)
	logger.mu.Lock()
	defer logger.mu.Unlock()
	for _, line := range logger.lines {
		if strings.Contains(line, "OnEvent panicked") && strings.Contains(line, "boom") {
			return
		}
	}
	t.Fatalf("no panic report in %q", logger.lines)
}

// Many goroutines on one manager; the counts agree with what they did.
func TestConcurrent(t *testing.T) {
	var created, deleted, expired atomic.Int64
	m, clk, _ := newVirtual(t, time.Minute)
	const workers, perWorker = 16, 200
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			ctx := context.Background()
			user := fmt.Sprint("user", w%4)
			active := StateActive
			for i := 0; i < perWorker; i++ {
				s, _, err := m.CreateSession(ctx, user, "10.1.2.3", uint32(i), mustV7(t),
					map[string]string{"w": fmt.Sprint(w)})
				if err != nil {
					errc <- err
					return
				}
				created.Add(1)
				if _, err := m.Heartbeat(ctx, s.SessionID); err != nil {
					errc <- err
					return
				}
				g, err := m.GetSession(ctx, s.SessionID)
				if err != nil || g.Metadata["w"] != fmt.Sprint(w) {
					errc <- fmt.Errorf("get: %v", err)
					return
				}
				if _, err := m.UpdateSession(ctx, s.SessionID, &active, map[string]string{"i": fmt.Sprint(i)},
					nil); err != nil {
					errc <- err
					return
				}
				if err := m.AddStats(ctx, s.SessionID, Stats{PacketsSent: 1}); err != nil {
					errc <- err
					return
				}
				if i%3 == 0 {
					if err := m.DeleteSession(ctx, s.SessionID, "test"); err != nil {
						errc <- err
						return
					}
					deleted.Add(1)
				}
				if i%50 == 0 {
					if _, _, err := m.ListSessions(ctx, &SessionFilter{UserID: user, Limit: 10}); err != nil {
						errc <- err
						return
					}
					n, err := m.Advance(clk.now())
					if err != nil {
						errc <- err
						return
					}
					expired.Add(int64(n))
				}
			}
		}(w)
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	c, err := m.Counts()
	if err != nil {
		t.Fatal(err)
	}
	want := uint64(created.Load() - deleted.Load() - expired.Load())
	if c.Total != want || c.ByState[StateActive] != want || expired.Load() != 0 {
		t.Fatalf("counts %+v, want %d active", c, want)
	}
	all, total, err := m.ListSessions(context.Background(), nil)
	if err != nil || total != int(want) || len(all) != int(want) {
		t.Fatalf("list %d/%d %v", len(all), total, err)
	}
}

// Close waits for calls in flight on other goroutines and keeps new ones
// out; nothing touches a freed engine (run with -race and ASan-built lib).
func TestCloseWhileBusy(t *testing.T) {
	m, err := NewManager(&ManagerConfig{ManualReaper: true})
	if err != nil {
		t.Fatal(err)
	}
	s := mustCreate(t, m, "u", nil)
	h, err := m.Pin(context.Background(), s.SessionID)
	if err != nil {
		t.Fatal(err)
	}
	start := make(chan struct{})
	var wg sync.WaitGroup
	var ok, closed atomic.Int64
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			<-start
			for {
				var err error
				if w%2 == 0 {
					_, err = m.Heartbeat(context.Background(), s.SessionID)
				} else {
					_, err = h.Touch()
				}
				if errors.Is(err, ErrClosed) {
					closed.Add(1)
					return
				}
				if err != nil {
					t.Error(err)
					return
				}
				ok.Add(1)
			}
		}(w)
	}
	close(start)
	for ok.Load() < 1000 {
		runtime.Gosched()
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if closed.Load() != 8 {
		t.Fatalf("%d goroutines saw ErrClosed", closed.Load())
	}
}

// A forgotten Handle is released by its finalizer (a safety net only).
func TestHandleFinalizer(t *testing.T) {
	m := newManager(t, &ManagerConfig{ManualReaper: true})
	s := mustCreate(t, m, "u", nil)
	func() {
		if _, err := m.Pin(context.Background(), s.SessionID); err != nil {
			t.Fatal(err)
		}
	}()
	pinned := func() int {
		m.handlesMu.Lock()
		defer m.handlesMu.Unlock()
		return len(m.handles)
	}
	for i := 0; i < 50 && pinned() != 0; i++ {
		runtime.GC() // the finalizer runs after a cycle finds the Handle unreachable
		runtime.Gosched()
	}
	if pinned() != 0 {
		t.Fatal("finalizer did not release the handle")
	}
}

// With CloseLinger a closed session stays readable and says so.
func TestCloseLinger(t *testing.T) {
	clk := newVClock()
	m := newManager(t, &ManagerConfig{ManualReaper: true, Clock: clk.now, CloseLinger: 10 * time.Second})
	ctx := context.Background()
	s := mustCreate(t, m, "u", nil)
	closed := StateClosed
	if _, err := m.UpdateSession(ctx, s.SessionID, &closed, nil, nil); err != nil {
		t.Fatal(err)
	}
	g, err := m.GetSession(ctx, s.SessionID)
	if err != nil || g.State != StateClosed {
		t.Fatalf("lingering: %+v %v", g, err)
	}
	_, err = m.Heartbeat(ctx, s.SessionID)
	wantErr(t, err, ErrSessionClosed)
	active := StateActive
	_, err = m.UpdateSession(ctx, s.SessionID, &active, nil, nil)
	if err == nil {
		t.Fatal("revived a closed session")
	} else if !errors.Is(err, ErrSessionClosed) && !errors.Is(err, ErrInvalidTransition) {
		t.Fatal(err)
	}
	clk.add(11 * time.Second)
	if _, err := m.Advance(clk.now()); err != nil {
		t.Fatal(err)
	}
	_, err = m.GetSession(ctx, s.SessionID)
	wantErr(t, err, ErrSessionNotFound)
}

// The reaper thread (a C thread) calls the Go clock and OnEvent.
func TestReaperThreadEvents(t *testing.T) {
	clk := newVClock()
	expired := make(chan Event, 1)
	m := newManager(t, &ManagerConfig{DefaultTimeout: time.Second, CleanupInterval: time.Millisecond,
		TickInterval: time.Millisecond, Clock: clk.now, OnEvent: func(e Event) {
			if e.Type == EventExpired {
				expired <- e
			}
		}})
	s := mustCreate(t, m, "u", nil)
	clk.add(2 * time.Second)
	select {
	case e := <-expired: // the reaper ran on its own thread and saw virtual time
		if e.SessionID != s.SessionID {
			t.Fatalf("%+v", e)
		}
	case <-time.After(30 * time.Second): // a failure guard, not synchronisation
		t.Fatal("the reaper thread did not expire the session")
	}
}

// IdleTimeout moves a quiet active session to idle; activity wakes it.
func TestIdleDetection(t *testing.T) {
	clk := newVClock()
	ev := &eventLog{}
	m := newManager(t, &ManagerConfig{ManualReaper: true, Clock: clk.now, OnEvent: ev.on,
		DefaultTimeout: time.Minute, IdleTimeout: 10 * time.Second})
	ctx := context.Background()
	s := mustCreate(t, m, "u", nil)
	active := StateActive
	if _, err := m.UpdateSession(ctx, s.SessionID, &active, nil, nil); err != nil {
		t.Fatal(err)
	}
	clk.add(11 * time.Second)
	if _, err := m.Advance(clk.now()); err != nil {
		t.Fatal(err)
	}
	if g, _ := m.GetSession(ctx, s.SessionID); g.State != StateIdle {
		t.Fatalf("state %v", g.State)
	}
	if _, err := m.Heartbeat(ctx, s.SessionID); err != nil {
		t.Fatal(err)
	}
	if g, _ := m.GetSession(ctx, s.SessionID); g.State != StateActive {
		t.Fatalf("state after heartbeat %v", g.State)
	}
	var got []string
	for _, e := range ev.take() {
		got = append(got, e.OldState.String()+"->"+e.NewState.String())
	}
	if fmt.Sprint(got) != "[any->connecting connecting->active active->idle idle->active]" {
		t.Fatalf("events %v", got)
	}
}
