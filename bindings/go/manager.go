package afsm

/*
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"context"
	"runtime/cgo"
	"sync"
	"time"
	"unsafe"
)

// ManagerConfig configures a Manager. The zero value (or a nil pointer)
// gives the engine's defaults.
type ManagerConfig struct {
	// DefaultTimeout is how long a session lives without a heartbeat
	// (0: 30 minutes). Rounded up to whole milliseconds.
	DefaultTimeout time.Duration
	// CleanupInterval is the reaper thread's period (0: 1 s). Unused with
	// ManualReaper.
	CleanupInterval time.Duration
	// TickInterval is the timing wheel's resolution (0: 100 ms).
	TickInterval time.Duration
	// IdleTimeout enables idle detection (0: none).
	IdleTimeout time.Duration
	// MaxLifetime caps a session's life from creation, heartbeats or not
	// (0: none).
	MaxLifetime time.Duration
	// CloseLinger keeps a session set to StateClosed readable this long
	// (heartbeats then fail with ErrSessionClosed) before it is removed;
	// 0 removes it at once.
	CloseLinger time.Duration
	// ShardCount is the number of engine shards: 0 for the default (the
	// next power of two >= 4 x CPUs), else a power of two <= 4096.
	ShardCount int
	// CapacityHint presizes the tables for this many sessions (0: 1024).
	CapacityHint int
	// ServerAddr is reported in every session (at most 255 bytes).
	ServerAddr string
	// ManualReaper: no engine thread; the caller expires sessions by
	// calling Advance from its own loop.
	ManualReaper bool
	// Clock, if set, replaces the engine's monotonic clock (nanoseconds,
	// never decreasing), e.g. for virtual time in tests. It is called on
	// every engine operation, through a C-to-Go callback (~100 ns), so
	// leave it nil in production.
	Clock func() int64
	// Logger receives the engine's log lines; nil discards them.
	Logger Logger
	// LogLevel is the least severe level passed to Logger (0: LogInfo).
	LogLevel LogLevel
	// OnEvent, if set, is called once per session change (created, state
	// changed, expired, deleted), synchronously, on the goroutine that made
	// the change (for expiry: the reaper thread or Advance's caller),
	// outside every engine lock. It may call the Manager's methods, except
	// Close, and must not block for long. Events of one session arrive in
	// order; events of different sessions may arrive concurrently.
	OnEvent func(Event)
}

// Manager is a session engine. All its methods are safe for concurrent
// use. Close releases it; a Manager must be closed, since its memory lives
// in C.
type Manager struct {
	gate       gate
	eng        *C.afsm_engine
	engp       C.uintptr_t // eng as an integer, for the hot-path helpers
	hooks      cgo.Handle  // 0 when no hook is set
	serverAddr string
	manual     bool

	closeOnce sync.Once
	closeErr  error

	handlesMu sync.Mutex
	handles   map[*handleCore]struct{} // pinned, unreleased
}

const gateStripes = 64

// NewManager opens an engine. cfg may be nil for all defaults. Errors match
// ErrInvalidArgument (a negative duration or count, a shard count that is
// not a power of two), ErrTooLong (ServerAddr) or ErrOutOfMemory.
func NewManager(cfg *ManagerConfig) (*Manager, error) {
	if cfg == nil {
		cfg = &ManagerConfig{}
	}
	const op = "NewManager"
	var c C.afsm_config
	if st := C.afsm_config_init(&c, C.AFSM_CONFIG_VERSION); st != C.AFSM_OK {
		return nil, statusError(op, st)
	}
	durs := []struct {
		d   time.Duration
		dst *C.uint64_t
	}{
		{cfg.DefaultTimeout, &c.default_timeout_ms},
		{cfg.CleanupInterval, &c.cleanup_interval_ms},
		{cfg.TickInterval, &c.tick_ms},
		{cfg.IdleTimeout, &c.idle_timeout_ms},
		{cfg.MaxLifetime, &c.max_lifetime_ms},
		{cfg.CloseLinger, &c.close_linger_ms},
	}
	for _, d := range durs {
		ms, ok := durationMs(d.d)
		if !ok {
			return nil, argError(op, C.AFSM_EINVAL)
		}
		*d.dst = C.uint64_t(ms)
	}
	if cfg.ShardCount < 0 || cfg.ShardCount > 1<<30 || cfg.CapacityHint < 0 || cfg.LogLevel < 0 {
		return nil, argError(op, C.AFSM_EINVAL)
	}
	c.shard_count = C.uint32_t(cfg.ShardCount)
	c.capacity_hint = C.uint64_t(cfg.CapacityHint)
	c.log_level = C.uint32_t(cfg.LogLevel)
	if cfg.ManualReaper {
		c.reaper = C.AFSM_REAPER_MANUAL
	} else {
		c.reaper = C.AFSM_REAPER_THREAD
	}
	if len(cfg.ServerAddr) > C.AFSM_SERVER_ADDR_MAX {
		return nil, argError(op, C.AFSM_ETOOLONG)
	}

	m := &Manager{
		gate:       newGate(gateStripes),
		serverAddr: cfg.ServerAddr,
		manual:     cfg.ManualReaper,
		handles:    make(map[*handleCore]struct{}),
	}
	var want C.int
	h := &hooks{onEvent: cfg.OnEvent, logger: cfg.Logger, clock: cfg.Clock}
	if h.onEvent != nil {
		want |= C.AFSMGO_WANT_EVENT
	}
	if h.logger != nil {
		want |= C.AFSMGO_WANT_LOG
	}
	if h.clock != nil {
		want |= C.AFSMGO_WANT_CLOCK
	}
	if want != 0 {
		// Registered before open: the engine reads the clock while opening.
		m.hooks = cgo.NewHandle(h)
	}
	addr := []byte(cfg.ServerAddr)
	var addrPtr *C.char
	if len(addr) > 0 {
		addrPtr = (*C.char)(unsafe.Pointer(&addr[0]))
	}
	var eng *C.afsm_engine
	st := C.afsmgo_open(&c, addrPtr, C.size_t(len(addr)), C.uintptr_t(m.hooks), want, &eng)
	m.eng = eng
	m.engp = C.uintptr_t(uintptr(unsafe.Pointer(eng)))
	if st != C.AFSM_OK {
		if m.hooks != 0 {
			m.hooks.Delete()
		}
		return nil, statusError(op, st)
	}
	return m, nil
}

// durationMs converts to whole milliseconds, rounding up; false if negative.
func durationMs(d time.Duration) (uint64, bool) {
	if d < 0 {
		return 0, false
	}
	return uint64((d + time.Millisecond - 1) / time.Millisecond), true
}

// enter checks ctx and the gate before a call crosses into C; the caller
// must call leave on the returned stripe.
func (m *Manager) enter(ctx context.Context, hint byte) (*stripe, error) {
	if ctx != nil {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
	s := m.gate.enter(hint)
	if s == nil {
		return nil, ErrClosed
	}
	return s, nil
}

// Close stops the reaper, releases every Handle still pinned and frees the
// engine and all its sessions. It waits for calls in progress on other
// goroutines; calls made afterwards return ErrClosed. No event or log
// callback runs after it returns. A second Close is a no-op that returns
// nil. Close must not be called from OnEvent, Logger or Clock.
func (m *Manager) Close() error {
	first := false
	m.closeOnce.Do(func() {
		first = true
		m.gate.shut()
		m.handlesMu.Lock()
		for hc := range m.handles {
			hc.releaseLocked()
		}
		m.handles = nil
		m.handlesMu.Unlock()
		if st := C.afsm_engine_close(m.eng); st != C.AFSM_OK {
			m.closeErr = statusError("Close", st)
			return
		}
		m.eng = nil
		if m.hooks != 0 {
			m.hooks.Delete()
		}
	})
	if !first {
		return nil
	}
	return m.closeErr
}

// Advance moves the engine's timing wheels to now (engine clock
// nanoseconds, see Now), expiring every session whose deadline has passed
// and firing their events on this goroutine. It returns how many expired.
// Meant for ManualReaper; harmless otherwise.
func (m *Manager) Advance(now int64) (int, error) {
	s, err := m.enter(nil, 0)
	if err != nil {
		return 0, err
	}
	defer s.leave()
	if now < 0 {
		return 0, argError("Advance", C.AFSM_EINVAL)
	}
	var n C.size_t
	st := C.afsm_engine_advance(m.eng, C.uint64_t(now), &n)
	return int(n), statusError("Advance", st)
}

// Tick is Advance(Now()): expire what is due by the engine clock.
func (m *Manager) Tick() (int, error) {
	now, err := m.Now()
	if err != nil {
		return 0, err
	}
	return m.Advance(now)
}

// Now reads the engine clock (nanoseconds; ManagerConfig.Clock if set).
func (m *Manager) Now() (int64, error) {
	s, err := m.enter(nil, 0)
	if err != nil {
		return 0, err
	}
	defer s.leave()
	var now C.uint64_t
	st := C.afsm_engine_now(m.eng, &now)
	return int64(now), statusError("Now", st)
}

// SetDefaultTimeout changes the timeout of sessions created afterwards
// without their own; existing sessions keep theirs. d must be positive.
func (m *Manager) SetDefaultTimeout(d time.Duration) error {
	s, err := m.enter(nil, 0)
	if err != nil {
		return err
	}
	defer s.leave()
	ms, ok := durationMs(d)
	if !ok {
		return argError("SetDefaultTimeout", C.AFSM_EINVAL)
	}
	return statusError("SetDefaultTimeout", C.afsm_engine_set_default_timeout(m.eng, C.uint64_t(ms)))
}

// Counts returns the number of sessions, in total and per state.
func (m *Manager) Counts() (Counts, error) {
	var out Counts
	s, err := m.enter(nil, 0)
	if err != nil {
		return out, err
	}
	defer s.leave()
	var c C.afsm_counts
	if st := C.afsm_engine_counts(m.eng, &c); st != C.AFSM_OK {
		return out, statusError("Counts", st)
	}
	out.Total = uint64(c.total)
	for i := range out.ByState {
		out.ByState[i] = uint64(c.by_state[i])
	}
	return out, nil
}

// GetStats reports the session counts in the old service's shape. The
// lifetime counters (created, deleted, expired totals, durations) come
// with the engine's metrics, which this binding does not expose yet.
func (m *Manager) GetStats(ctx context.Context) (*ManagerStats, error) {
	if ctx != nil {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
	c, err := m.Counts()
	if err != nil {
		return nil, err
	}
	return &ManagerStats{
		TotalSessions:         c.Total,
		ConnectingSessions:    c.ByState[StateConnecting],
		ActiveSessions:        c.ByState[StateActive],
		IdleSessions:          c.ByState[StateIdle],
		DisconnectingSessions: c.ByState[StateDisconnecting],
	}, nil
}

// Version returns the linked libafsm's version, e.g. "0.1.0".
func Version() string { return C.GoString(C.afsm_version()) }

// emptyCall crosses into C and back doing nothing useful (afsm_version
// returns a constant); the benchmarks use it to price one cgo crossing.
func emptyCall() { C.afsm_version() }
