package afsm

/*
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"context"
	"runtime"
	"runtime/cgo"
	"strconv"
	"strings"
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
	// CapacityHint presizes the tables for this many sessions (0: 1024; at most 1<<30).
	CapacityHint int
	// ServerAddr is reported in every session (at most 255 bytes of UTF-8).
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
	// MaxSessionsPerUser caps the sessions one user may hold (0: no cap);
	// LimitPolicy says what a create over the cap does.
	MaxSessionsPerUser int
	// LimitPolicy: LimitReject (the default: ErrLimitExceeded) or
	// LimitEvictOldest (the user's oldest session is deleted, reason
	// "evicted").
	LimitPolicy LimitPolicy
	// Key is the first token key (KeySize bytes), with id KeyID. KeyFile
	// instead names a file holding it (exactly KeySize bytes, owned by root
	// or this process's effective user, readable and writable by its owner
	// only: mode 0600 or 0400, else ErrKeyFile).
	// Neither: a random key for this Manager's life, so tokens die with the
	// process. Give the same key to every process that must accept the
	// same tokens, and more keys with AddKey / AddKeyFile.
	Key     []byte
	KeyFile string
	// KeyID is Key's or KeyFile's id, 1..MaxKeyID (0: 1); it travels in
	// every token.
	KeyID uint32
	// DisableMetrics skips the engine's counters (created, deleted,
	// durations, token results), to measure their cost; the session gauges
	// remain.
	DisableMetrics bool
	// OnEvent, if set, is called once per session change (created, state
	// changed, expired, deleted), synchronously, on the goroutine that made
	// the change (for expiry: the reaper thread or Advance's caller),
	// outside every engine lock. It may call the Manager's methods, except
	// Close, and must not block for long. Events of one session arrive in
	// order; events of different sessions may arrive concurrently.
	OnEvent func(Event)
	// Store selects where sessions live: StoreMemory (the default: this
	// process only) or StoreEtcd (shared by every Manager on the same etcd
	// and Etcd.Prefix; reads, heartbeats and stats additions are served
	// from a local replica, writes are etcd transactions).
	Store Store
	// Etcd configures StoreEtcd.
	Etcd EtcdConfig
}

// Store is where a Manager keeps its sessions.
type Store uint32

// The stores, as the C AFSM_STORE_*.
const (
	// StoreMemory keeps sessions in this process.
	StoreMemory Store = C.AFSM_STORE_MEMORY
	// StoreEtcd keeps them in etcd (core/etcd/README.md).
	StoreEtcd Store = C.AFSM_STORE_ETCD
)

// EtcdConfig says how to reach etcd (etcd >= 3.4, through its v3 JSON
// gateway). Expiry is etcd's: a session ends between its timeout and 4/3
// of it after its last heartbeat. LimitEvictOldest holds across
// managers (the create and the eviction are one etcd transaction).
// IdleTimeout, MaxLifetime and CloseLinger are not supported with
// StoreEtcd.
type EtcdConfig struct {
	// Endpoints are URLs, "http://127.0.0.1:2379" (https for TLS).
	Endpoints []string
	// Prefix is the key prefix (empty: "/afsm/").
	Prefix string
	// DialTimeout bounds a connection attempt (0: 2 s); RequestTimeout
	// every etcd call (0: 5 s), past which writes fail with ErrUnavailable.
	DialTimeout    time.Duration
	RequestTimeout time.Duration
	// CAFile, CertFile and KeyFile are PEM files for TLS (empty: none).
	CAFile, CertFile, KeyFile string
	// User and Password enable etcd authentication (empty: none).
	User, Password string
	// ReadMode says how gets, lists and counts are answered (ReadReplica:
	// the default).
	ReadMode ReadMode
	// StatsFlush is how often stats additions are written to etcd (0:
	// 10 s); a crash loses the stats added since the last pass (a period, or
	// more when passes outlast it, which the engine logs), never a session.
	StatsFlush time.Duration
}

// ReadMode is how the etcd store answers gets (by id, by connection,
// metadata, token validation), lists and counts (afsm.h, above
// AFSM_READ_REPLICA, says exactly what each guarantees). Heartbeats, stats
// and metrics always use the replica.
type ReadMode uint32

// The read modes, as the C AFSM_READ_*.
const (
	// ReadReplica answers from the local replica, lock-free; it lags etcd
	// by the watch's delay.
	ReadReplica ReadMode = C.AFSM_READ_REPLICA
	// ReadLinearizable reads the record from etcd; a list or count waits
	// until the replica has reached etcd's current revision, then answers
	// from it.
	ReadLinearizable ReadMode = C.AFSM_READ_LINEARIZABLE
	// ReadConsistent asks etcd for the record's revision (no payload) and
	// answers from the replica once it has applied it; a list or count
	// waits for etcd's current revision, as with ReadLinearizable.
	ReadConsistent ReadMode = C.AFSM_READ_CONSISTENT
)

// setEtcd fills the store fields of c with C strings; the returned func
// frees them (after open, which copies them).
func setEtcd(c *C.afsm_config, cfg *ManagerConfig) (func(), error) {
	var owned []*C.char
	free := func() {
		for _, p := range owned {
			C.free(unsafe.Pointer(p))
		}
	}
	str := func(s string) *C.char {
		if s == "" {
			return nil
		}
		p := C.CString(s)
		owned = append(owned, p)
		return p
	}
	c.store = C.uint32_t(cfg.Store)
	c.etcd_read_mode = C.uint32_t(cfg.Etcd.ReadMode)
	e := &cfg.Etcd
	for _, s := range append([]string{e.Prefix, e.CAFile, e.CertFile, e.KeyFile, e.User, e.Password}, e.Endpoints...) {
		if strings.IndexByte(s, 0) >= 0 {
			return free, argError("NewManager", C.AFSM_EINVAL, "Etcd: %q contains a NUL byte", s)
		}
	}
	for _, d := range []struct {
		d   time.Duration
		dst *C.uint64_t
	}{{e.DialTimeout, &c.etcd_dial_timeout_ms}, {e.RequestTimeout, &c.etcd_request_timeout_ms},
		{e.StatsFlush, &c.etcd_stats_flush_ms}} {
		ms, ok := durationMs(d.d)
		if !ok {
			return free, argError("NewManager", C.AFSM_EINVAL, "Etcd: duration %v, must be 0 or a positive number of milliseconds", d.d)
		}
		*d.dst = C.uint64_t(ms)
	}
	c.etcd_endpoints = str(strings.Join(e.Endpoints, ","))
	c.etcd_prefix = str(e.Prefix)
	c.etcd_ca_file = str(e.CAFile)
	c.etcd_cert_file = str(e.CertFile)
	c.etcd_key_file = str(e.KeyFile)
	c.etcd_user = str(e.User)
	c.etcd_password = str(e.Password)
	return free, nil
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

	// listedHook, set only by tests before the Manager is shared, runs
	// between a listing and its metadata read (with the ids listed), to
	// change the engine in that window deterministically.
	listedHook func(ids []UUID)
}

// deleteBeforeMetadata, for tests only, makes the next n metadata reads on
// this Manager's engine delete their session first (the shim reads a
// session's info and then its metadata in one crossing, where no Go code
// can run in between); 0 turns it off. It returns how many deletes of the
// previous setting were left.
func (m *Manager) deleteBeforeMetadata(n int) int {
	return int(C.afsmgo_test_delete_before_metadata(m.eng, C.int(n)))
}

const gateStripes = 64

// NewManager opens an engine. cfg may be nil for all defaults. Errors match
// ErrInvalidArgument (a negative duration or count, a shard count that is
// not a power of two; with StoreEtcd: no or a malformed endpoint, or an
// option that store does not support), ErrTooLong (ServerAddr),
// ErrOutOfMemory, or ErrUnavailable (StoreEtcd: etcd did not answer the
// initial load within Etcd.RequestTimeout).
func NewManager(cfg *ManagerConfig) (*Manager, error) {
	if cfg == nil {
		cfg = &ManagerConfig{}
	}
	const op = "NewManager"
	var c C.afsm_config
	if st := C.afsm_config_init(&c, C.AFSM_CONFIG_VERSION); st != C.AFSM_OK {
		return nil, statusError(op, st)
	}
	// Named as the C fields, as the engine's own details and the Python
	// binding name them (tests/bindings_cases.json).
	durs := []struct {
		name string
		d    time.Duration
		dst  *C.uint64_t
	}{
		{"config.default_timeout_ms", cfg.DefaultTimeout, &c.default_timeout_ms},
		{"config.cleanup_interval_ms", cfg.CleanupInterval, &c.cleanup_interval_ms},
		{"config.tick_ms", cfg.TickInterval, &c.tick_ms},
		{"config.idle_timeout_ms", cfg.IdleTimeout, &c.idle_timeout_ms},
		{"config.max_lifetime_ms", cfg.MaxLifetime, &c.max_lifetime_ms},
		{"config.close_linger_ms", cfg.CloseLinger, &c.close_linger_ms},
	}
	for _, d := range durs {
		ms, ok := durationMs(d.d)
		if !ok {
			return nil, argError(op, C.AFSM_EINVAL, "%s: %s, must not be negative (0: the default)", d.name,
				msText(d.d))
		}
		*d.dst = C.uint64_t(ms)
	}
	ints := []struct {
		name     string
		v, limit int64
	}{
		{"ShardCount", int64(cfg.ShardCount), 1 << 30},
		{"CapacityHint", int64(cfg.CapacityHint), 1<<63 - 1},
		{"LogLevel", int64(cfg.LogLevel), 1 << 31},
		{"MaxSessionsPerUser", int64(cfg.MaxSessionsPerUser), 1<<32 - 1},
	}
	for _, n := range ints {
		if n.v < 0 || n.v > n.limit {
			return nil, argError(op, C.AFSM_EINVAL, "%s: %d, must be 0..%d", n.name, n.v, n.limit)
		}
	}
	c.max_sessions_per_user = C.uint32_t(cfg.MaxSessionsPerUser)
	c.limit_policy = C.uint32_t(cfg.LimitPolicy)
	c.key_id = C.uint32_t(cfg.KeyID)
	if cfg.KeyID == 0 && (cfg.Key != nil || cfg.KeyFile != "") {
		c.key_id = 1 // as in the Python binding: a first key without an id is key 1
	}
	if cfg.DisableMetrics {
		c.disable_metrics = 1
	}
	c.shard_count = C.uint32_t(cfg.ShardCount)
	c.capacity_hint = C.uint64_t(cfg.CapacityHint)
	c.log_level = C.uint32_t(cfg.LogLevel)
	if cfg.ManualReaper {
		c.reaper = C.AFSM_REAPER_MANUAL
	} else {
		c.reaper = C.AFSM_REAPER_THREAD
	}
	if err := textError(op, "server_addr", cfg.ServerAddr); err != nil {
		return nil, err // every Session carries it back as a string: UTF-8, as in Python
	}
	if len(cfg.ServerAddr) > C.AFSM_SERVER_ADDR_MAX {
		return nil, argError(op, C.AFSM_ETOOLONG, "ServerAddr: %d bytes, must be at most %d", len(cfg.ServerAddr),
			C.AFSM_SERVER_ADDR_MAX)
	}
	freeEtcd, err := setEtcd(&c, cfg)
	defer freeEtcd()
	if err != nil {
		return nil, err
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
	// The key and the path are Go byte slices without Go pointers inside;
	// the engine copies both while opening.
	var keyPtr *C.uint8_t
	if cfg.Key != nil {
		key := make([]byte, len(cfg.Key)+1) // never empty: an empty Key gets the engine's EINVAL, not ENULL
		copy(key, cfg.Key)
		keyPtr = (*C.uint8_t)(unsafe.Pointer(&key[0]))
		defer zero(key)
	}
	var pathPtr *C.char
	if cfg.KeyFile != "" {
		path := []byte(cfg.KeyFile)
		pathPtr = (*C.char)(unsafe.Pointer(&path[0]))
	}
	var eng *C.afsm_engine
	// The error's detail is the thread's: stay on it (see gate.enter).
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	st := C.afsmgo_open(&c, addrPtr, C.size_t(len(addr)), keyPtr, C.size_t(len(cfg.Key)), pathPtr,
		C.size_t(len(cfg.KeyFile)), C.uintptr_t(m.hooks), want, &eng)
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

// msText is d in milliseconds, exactly and without an exponent ("-1.5"),
// for details in the engine's unit that the Python binding words alike.
func msText(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', -1, 64)
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

// enterHot is enter for the data-plane calls (see gate.enterHot); the
// caller must call leaveHot.
func (m *Manager) enterHot(ctx context.Context, hint byte) (*stripe, error) {
	if ctx != nil {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
	s := m.gate.enterHot(hint)
	if s == nil {
		return nil, ErrClosed
	}
	return s, nil
}

// Close stops the reaper, releases every Handle still pinned and frees the
// engine and all its sessions. It waits for calls in progress on other
// goroutines; calls made afterwards return ErrClosed. No event or log
// callback runs after it returns. A second Close is a no-op that returns
// nil. Called from OnEvent, Logger or Clock (on the callback's goroutine)
// it returns ErrCloseInCallback and closes nothing: the call that fired the
// callback is still in progress, so waiting for it would never end.
func (m *Manager) Close() error {
	if C.afsmgo_in_callback() != 0 {
		return ErrCloseInCallback
	}
	first := false
	m.closeOnce.Do(func() {
		first = true
		m.gate.shut()
		// Released outside handlesMu: a release waits for the handle's
		// calls in progress, and one of them may be running an OnEvent that
		// releases another handle (and needs handlesMu to do it).
		m.handlesMu.Lock()
		pinned := make([]*handleCore, 0, len(m.handles))
		for hc := range m.handles {
			pinned = append(pinned, hc)
		}
		m.handles = nil
		m.handlesMu.Unlock()
		for _, hc := range pinned {
			hc.finish()
		}
		if st := C.afsm_engine_close(m.eng); st != C.AFSM_OK {
			m.closeErr = codeError("Close", st)
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
// Meant for ManualReaper; harmless otherwise. A now that is negative or
// ahead of the engine clock is ErrInvalidArgument, nothing done (the
// detail names now_ns, as the C API and the Python binding do).
func (m *Manager) Advance(now int64) (int, error) {
	s, err := m.enter(nil, 0)
	if err != nil {
		return 0, err
	}
	defer s.leave()
	if now < 0 {
		return 0, argError("Advance", C.AFSM_EINVAL, "now_ns: %d, must be 0..the engine clock's current reading", now)
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
	if !ok { // 0 reaches the engine, which words the limit the same way
		return argError("SetDefaultTimeout", C.AFSM_EINVAL, "timeout_ms: %s, must be 1..%d (~49.7 days)", msText(d),
			uint32(1<<32-1))
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

// Pinned returns the number of pinned handles not yet released: 0 before
// a Close that is to succeed.
func (m *Manager) Pinned() (uint64, error) {
	s, err := m.enter(nil, 0)
	if err != nil {
		return 0, err
	}
	defer s.leave()
	var n C.uint64_t
	if st := C.afsm_engine_pinned(m.eng, &n); st != C.AFSM_OK {
		return 0, statusError("Pinned", st)
	}
	return uint64(n), nil
}

// GetStats returns the engine's metrics (afsm_metrics_snapshot): session
// gauges by state, created and deleted totals by reason, expiries,
// idle/wake transitions, the session duration histogram and token
// validations by result. Errors: ErrClosed or ctx.Err().
func (m *Manager) GetStats(ctx context.Context) (*Metrics, error) {
	s, err := m.enter(ctx, 0)
	if err != nil {
		return nil, err
	}
	defer s.leave()
	var c C.afsm_metrics
	c.version = C.AFSM_METRICS_VERSION
	if st := C.afsm_metrics_snapshot(m.eng, &c); st != C.AFSM_OK {
		return nil, statusError("GetStats", st)
	}
	out := &Metrics{
		ShardCount:      uint32(c.shard_count),
		Sessions:        uint64(c.sessions),
		Created:         uint64(c.created_total),
		Expired:         uint64(c.expired_total),
		IdleTransitions: uint64(c.idle_transitions_total),
		WakeTransitions: uint64(c.wake_transitions_total),
		ReaperLag:       time.Duration(c.reaper_lag_ns),
		DeferredFrees:   uint64(c.deferred_frees),
	}
	for i := range out.SessionsByState {
		out.SessionsByState[i] = uint64(c.sessions_by_state[i])
	}
	for i := range out.Deleted {
		out.Deleted[i] = uint64(c.deleted_total[i])
	}
	for i := range out.Duration.Buckets {
		out.Duration.Buckets[i] = uint64(c.duration_buckets[i])
	}
	out.Duration.Count = uint64(c.duration_count)
	out.Duration.Sum = float64(c.duration_sum_seconds)
	for i := range out.TokenValidations {
		out.TokenValidations[i] = uint64(c.token_validations[i])
	}
	return out, nil
}

// MetricsText returns the metrics in the Prometheus text exposition
// format (afsm_metrics_write_prometheus), ready to serve on /metrics.
func (m *Manager) MetricsText() (string, error) {
	s, err := m.enter(nil, 0)
	if err != nil {
		return "", err
	}
	defer s.leave()
	buf := make([]byte, 4096)
	for {
		var needed C.size_t
		st := C.afsm_metrics_write_prometheus(m.eng, (*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)), &needed)
		switch st {
		case C.AFSM_OK:
			return string(buf[:needed-1]), nil // needed counts the NUL
		case C.AFSM_EBUFFER: // the counters may grow between calls: loop
			buf = make([]byte, int(needed)+256)
		default:
			return "", statusError("MetricsText", st)
		}
	}
}

// AddKey adds a token key (KeySize bytes) under id (1..MaxKeyID) to the
// key ring. Every key in the ring opens tokens; only the current one (see
// UseKey) seals. The key is copied. Errors match ErrInvalidArgument (id,
// key size), ErrAlreadyExists (id in the ring), ErrClosed.
func (m *Manager) AddKey(id uint32, key []byte) error {
	s, err := m.enter(nil, 0)
	if err != nil {
		return err
	}
	defer s.leave()
	if len(key) == 0 {
		return argError("AddKey", C.AFSM_EINVAL, "key: 0 bytes, must be %d", C.AFSM_KEY_BYTES)
	}
	return statusError("AddKey", C.afsm_key_add(m.eng, C.uint32_t(id), (*C.uint8_t)(unsafe.Pointer(&key[0])),
		C.size_t(len(key))))
}

// AddKeyFile is AddKey with the key read from a file of exactly KeySize
// bytes, owned by root or this process's effective user, that only its
// owner may read or write (ErrKeyFile otherwise, or when it cannot be
// read).
func (m *Manager) AddKeyFile(id uint32, path string) error {
	s, err := m.enter(nil, 0)
	if err != nil {
		return err
	}
	defer s.leave()
	p := append([]byte(path), 0) // never empty, so never a NULL pointer
	return statusError("AddKeyFile", C.afsm_key_add_file(m.eng, C.uint32_t(id), (*C.char)(unsafe.Pointer(&p[0])),
		C.size_t(len(path))))
}

// UseKey makes key id (already in the ring) the one that seals new
// tokens. Errors match ErrKeyNotFound, ErrInvalidArgument, ErrClosed.
func (m *Manager) UseKey(id uint32) error {
	s, err := m.enter(nil, 0)
	if err != nil {
		return err
	}
	defer s.leave()
	return statusError("UseKey", C.afsm_key_use(m.eng, C.uint32_t(id)))
}

// RemoveKey removes key id from the ring: its tokens then fail with
// ErrKeyRemoved. The current key cannot be removed (ErrBusy: UseKey
// another first). Errors also match ErrKeyNotFound, ErrInvalidArgument,
// ErrClosed.
func (m *Manager) RemoveKey(id uint32) error {
	s, err := m.enter(nil, 0)
	if err != nil {
		return err
	}
	defer s.leave()
	return statusError("RemoveKey", C.afsm_key_remove(m.eng, C.uint32_t(id)))
}

func zero(b []byte) {
	for i := range b {
		b[i] = 0
	}
}

// Version returns the linked libafsm's version, e.g. "0.1.0".
func Version() string { return C.GoString(C.afsm_version()) }

// emptyCall crosses into C and back doing nothing useful (afsm_version
// returns a constant); the benchmarks use it to price one cgo crossing.
func emptyCall() { C.afsm_version() }
