package afsm

/*
#include "afsm.h"
*/
import "C"

import (
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
}

// Counts are session numbers summed over the engine's shards; each shard's
// numbers are exact, the sum is not one atomic snapshot under writes.
type Counts struct {
	Total   uint64
	ByState [C.AFSM_STATE_COUNT]uint64 // indexed by State
}

// ManagerStats are what GetStats reports.
type ManagerStats struct {
	TotalSessions         uint64
	ConnectingSessions    uint64
	ActiveSessions        uint64
	IdleSessions          uint64
	DisconnectingSessions uint64
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
