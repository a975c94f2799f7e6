package afsm

/*
#include "afsm.h"
*/
import "C"

import (
	"math"
	"strconv"
	"time"
)

// State is a session's state; the numbers match the C afsm_state and the
// gRPC SessionState enum.
type State uint32

// The session states. StateAny (0) is only meaningful in a SessionFilter.
const (
	StateAny           State = C.AFSM_STATE_ANY
	StateConnecting    State = C.AFSM_STATE_CONNECTING
	StateActive        State = C.AFSM_STATE_ACTIVE
	StateIdle          State = C.AFSM_STATE_IDLE
	StateDisconnecting State = C.AFSM_STATE_DISCONNECTING
	StateClosed        State = C.AFSM_STATE_CLOSED
)

var stateNames = [...]string{"any", "connecting", "active", "idle", "disconnecting", "closed"}

// String returns "connecting", "active", ...; "any" for StateAny and
// "State(n)" for an unknown value.
func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "State(" + strconv.FormatUint(uint64(s), 10) + ")"
}

// Stats are a session's traffic counters.
type Stats struct {
	PacketsSent     uint64
	PacketsReceived uint64
	BytesSent       uint64
	BytesReceived   uint64
	Retransmissions uint64
	CurrentRTTMs    uint32 // current round-trip time in milliseconds
}

func (s *Stats) toC() C.afsm_stats {
	return C.afsm_stats{
		packets_sent:     C.uint64_t(s.PacketsSent),
		packets_received: C.uint64_t(s.PacketsReceived),
		bytes_sent:       C.uint64_t(s.BytesSent),
		bytes_received:   C.uint64_t(s.BytesReceived),
		retransmissions:  C.uint64_t(s.Retransmissions),
		current_rtt_ms:   C.uint32_t(s.CurrentRTTMs),
	}
}

func statsFromC(c *C.afsm_stats) Stats {
	return Stats{
		PacketsSent:     uint64(c.packets_sent),
		PacketsReceived: uint64(c.packets_received),
		BytesSent:       uint64(c.bytes_sent),
		BytesReceived:   uint64(c.bytes_received),
		Retransmissions: uint64(c.retransmissions),
		CurrentRTTMs:    uint32(c.current_rtt_ms),
	}
}

// Session is a copy of one session, owned by the caller: changing it
// changes nothing in the engine, and no other goroutine sees it.
type Session struct {
	SessionID    UUID   // UUIDv7, time-ordered
	UserID       string // the user it belongs to
	ConnectionID UUID   // the transport's connection id
	ClientIP     string // canonical text (RFC 5952 for v6)
	ClientPort   uint32
	ServerAddr   string // the ManagerConfig's ServerAddr
	State        State
	CreatedAt    time.Time
	LastActiveAt time.Time
	ExpiresAt    time.Time
	Timeout      time.Duration     // the session's rolling timeout
	Metadata     map[string]string // never nil
	Stats        Stats
	// TokenGeneration counts the session's token rotations (1 at
	// creation); tokens of older generations are revoked. Restore needs it.
	TokenGeneration uint32
}

// Counts are session numbers summed over the engine's shards; each shard's
// numbers are exact, the sum is not one atomic snapshot under writes.
type Counts struct {
	Total   uint64
	ByState [C.AFSM_STATE_COUNT]uint64 // indexed by State
}

// LimitPolicy says what a create does when the user already has
// ManagerConfig.MaxSessionsPerUser sessions.
type LimitPolicy uint32

// The limit policies, as the C AFSM_LIMIT_*.
const (
	// LimitReject fails the create with ErrLimitExceeded.
	LimitReject LimitPolicy = C.AFSM_LIMIT_REJECT
	// LimitEvictOldest deletes the user's oldest session (EventDeleted,
	// reason "evicted") to make room.
	LimitEvictOldest LimitPolicy = C.AFSM_LIMIT_EVICT_OLDEST
)

// TokenOption changes how a token is sealed (IssueToken, RotateToken).
type TokenOption uint32

// TokenBindIP makes the token valid only when presented from the
// session's client IP (ValidateToken's clientIP).
const TokenBindIP TokenOption = C.AFSM_TOKEN_BIND_IP

// KeySize is the size of a token key in bytes (AddKey, ManagerConfig.Key,
// and of a key file).
const KeySize = C.AFSM_KEY_BYTES

// MaxKeyID is the largest key id; key ids start at 1.
const MaxKeyID = C.AFSM_KEY_ID_MAX

// DeleteReason is why sessions left, the label of session_deleted_total.
type DeleteReason int

// The delete reasons, as the C afsm_delete_reason.
const (
	DeleteRequested DeleteReason = C.AFSM_DELETE_REQUESTED // DeleteSession
	DeleteUser      DeleteReason = C.AFSM_DELETE_USER      // DeleteUserSessions
	DeleteClosed    DeleteReason = C.AFSM_DELETE_CLOSED    // state set to StateClosed
	DeleteEvicted   DeleteReason = C.AFSM_DELETE_EVICTED   // over MaxSessionsPerUser
	DeleteExpired   DeleteReason = C.AFSM_DELETE_EXPIRED   // also counted in Metrics.Expired

	// DeleteReasonCount is the number of delete reasons.
	DeleteReasonCount = C.AFSM_DELETE_REASON_COUNT
)

var deleteReasonNames = [DeleteReasonCount]string{"requested", "user", "closed", "evicted", "expired"}

// String returns the Prometheus label: "requested", "user", "closed",
// "evicted", "expired", or "DeleteReason(n)".
func (r DeleteReason) String() string {
	if r >= 0 && int(r) < len(deleteReasonNames) {
		return deleteReasonNames[r]
	}
	return "DeleteReason(" + strconv.Itoa(int(r)) + ")"
}

// TokenResult is a token validation's outcome, the label of
// session_token_validations_total.
type TokenResult int

// The token results, as the C afsm_token_result.
const (
	TokenOK         TokenResult = C.AFSM_TOKEN_OK
	TokenMalformed  TokenResult = C.AFSM_TOKEN_MALFORMED   // ErrTokenMalformed
	TokenForged     TokenResult = C.AFSM_TOKEN_FORGED      // ErrTokenForged
	TokenUnknownKey TokenResult = C.AFSM_TOKEN_UNKNOWN_KEY // ErrUnknownKey
	TokenRemovedKey TokenResult = C.AFSM_TOKEN_REMOVED_KEY // ErrKeyRemoved
	TokenNotFound   TokenResult = C.AFSM_TOKEN_NOT_FOUND   // ErrSessionNotFound
	TokenExpired    TokenResult = C.AFSM_TOKEN_EXPIRED     // ErrSessionExpired
	TokenClosed     TokenResult = C.AFSM_TOKEN_CLOSED      // ErrSessionClosed
	TokenRevoked    TokenResult = C.AFSM_TOKEN_REVOKED     // ErrTokenRevoked
	TokenIPMismatch TokenResult = C.AFSM_TOKEN_IP_MISMATCH // ErrIPMismatch

	// TokenResultCount is the number of token results.
	TokenResultCount = C.AFSM_TOKEN_RESULT_COUNT
)

var tokenResultNames = [TokenResultCount]string{"ok", "malformed", "forged", "unknown_key", "removed_key",
	"not_found", "expired", "closed", "revoked", "ip_mismatch"}

// String returns the Prometheus label: "ok", "malformed", "forged", ...,
// or "TokenResult(n)".
func (r TokenResult) String() string {
	if r >= 0 && int(r) < len(tokenResultNames) {
		return tokenResultNames[r]
	}
	return "TokenResult(" + strconv.Itoa(int(r)) + ")"
}

// DurationBuckets is the number of buckets of Metrics.Duration.
const DurationBuckets = C.AFSM_DURATION_BUCKETS

// DurationBucketBounds are the upper bounds, in seconds (inclusive, as
// Prometheus's le), of the session_duration_seconds buckets; the last is
// +Inf.
var DurationBucketBounds = [DurationBuckets]float64{1, 5, 15, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 43200,
	86400, math.Inf(1)}

// Histogram is session_duration_seconds: how long sessions lived,
// observed when they ended (any reason).
type Histogram struct {
	// Buckets[i] counts the sessions that lived more than
	// DurationBucketBounds[i-1] and at most DurationBucketBounds[i] seconds:
	// per bucket, not cumulative as in the exposition format.
	Buckets [DurationBuckets]uint64
	Count   uint64  // the sum of Buckets
	Sum     float64 // seconds, at millisecond resolution
}

// Metrics are the engine's counters (afsm_metrics_snapshot), summed over
// its shards: each is exact, the set is not one atomic snapshot while
// other goroutines write. With ManagerConfig.DisableMetrics only the
// session gauges (Sessions, SessionsByState) and ShardCount move.
type Metrics struct {
	ShardCount       uint32
	Sessions         uint64                     // session_total (gauge)
	SessionsByState  [C.AFSM_STATE_COUNT]uint64 // indexed by State; StateAny's is 0
	Created          uint64                     // session_created_total
	Deleted          [DeleteReasonCount]uint64  // indexed by DeleteReason; expired ones included
	Expired          uint64                     // session_expired_total (= Deleted[DeleteExpired])
	IdleTransitions  uint64                     // active -> idle by idle detection
	WakeTransitions  uint64                     // idle -> active by activity
	Duration         Histogram                  // session_duration_seconds
	TokenValidations [TokenResultCount]uint64   // indexed by TokenResult
	ReaperLag        time.Duration              // engine clock minus where the wheels last got to
	DeferredFrees    uint64                     // memory waiting for readers (process-wide)
}

// DeletedTotal is the sum of Deleted over every reason.
func (m *Metrics) DeletedTotal() uint64 {
	var n uint64
	for _, d := range m.Deleted {
		n += d
	}
	return n
}

// EventType says what happened to a session.
type EventType uint32

// The event types, as in the C afsm_event_type.
const (
	EventCreated      EventType = C.AFSM_EVENT_CREATED
	EventStateChanged EventType = C.AFSM_EVENT_STATE_CHANGED
	EventExpired      EventType = C.AFSM_EVENT_EXPIRED
	EventDeleted      EventType = C.AFSM_EVENT_DELETED
)

// String returns "created", "state_changed", "expired" or "deleted".
func (t EventType) String() string {
	switch t {
	case EventCreated:
		return "created"
	case EventStateChanged:
		return "state_changed"
	case EventExpired:
		return "expired"
	case EventDeleted:
		return "deleted"
	}
	return "EventType(" + strconv.FormatUint(uint64(t), 10) + ")"
}

// Event is one change to a session, delivered to ManagerConfig.OnEvent.
type Event struct {
	Type         EventType
	OldState     State // before the change (EventCreated: StateAny)
	NewState     State // after it (EventExpired, EventDeleted: the last state)
	SessionID    UUID
	ConnectionID UUID
	UserID       string
	Reason       string // EventDeleted: "expired", "evicted", "closed", "deleted" or the caller's reason
	CreatedAt    time.Time
	At           time.Time
}

// LogLevel is a log line's severity, as in the C AFSM_LOG_* levels.
type LogLevel int

// The log levels.
const (
	LogDebug LogLevel = C.AFSM_LOG_DEBUG
	LogInfo  LogLevel = C.AFSM_LOG_INFO
	LogWarn  LogLevel = C.AFSM_LOG_WARN
	LogError LogLevel = C.AFSM_LOG_ERROR
)

// String returns "debug", "info", "warn", "error" or "LogLevel(n)".
func (l LogLevel) String() string {
	switch l {
	case LogDebug:
		return "debug"
	case LogInfo:
		return "info"
	case LogWarn:
		return "warn"
	case LogError:
		return "error"
	}
	return "LogLevel(" + strconv.Itoa(int(l)) + ")"
}

// LogField is one key/value pair of a log line.
type LogField struct {
	Key   string
	Value string
}

// Logger receives the engine's log lines (at or above
// ManagerConfig.LogLevel). Log is called on the goroutine or thread that
// logged, possibly concurrently; it must not block for long and must not
// call Manager.Close. Adapting a *zap.Logger or *slog.Logger takes a few
// lines.
type Logger interface {
	Log(level LogLevel, msg string, fields []LogField)
}
