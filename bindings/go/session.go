package afsm

/*
#include "shim.h"
*/
import "C"

import (
	"context"
	"encoding/binary"
	"net/netip"
	"strings"
	"sync"
	"time"
	"unsafe"
)

// Buffer sizes that hold any valid input or metadata, so the common call
// allocates nothing on the C side and nothing but its result on the Go side.
const (
	// key NUL value NUL for every pair: the byte bound plus two per key.
	mdBufSize  = C.AFSM_METADATA_BYTES_MAX + 2*C.AFSM_METADATA_KEYS_MAX
	argBufSize = C.AFSM_USER_ID_MAX + C.AFSM_REASON_MAX + C.AFSM_IP_STRING_SIZE + C.AFSM_METADATA_BYTES_MAX
)

// scratch is per-call memory passed to C. It holds no Go pointers, so
// passing pointers into it is within cgo's rules, and it is pooled so the
// escape of those pointers costs no allocation per call.
type scratch struct {
	info     C.afsm_session_info
	mdLen    C.size_t
	mdStatus C.afsm_status
	lens     [2 * C.AFSM_METADATA_KEYS_MAX]C.size_t
	md       [mdBufSize]byte
	args     [argBufSize]byte
	tok      [C.AFSM_TOKEN_SIZE]byte
	tokLen   C.size_t
}

var scratchPool = sync.Pool{New: func() interface{} {
	sc := new(scratch)
	sc.info.version = C.AFSM_SESSION_INFO_VERSION
	return sc
}}

func getScratch() *scratch   { return scratchPool.Get().(*scratch) }
func putScratch(sc *scratch) { scratchPool.Put(sc) }

// halves splits an id into big-endian halves, so hot calls pass it by value
// (a pointer argument would escape to the heap).
func (u *UUID) halves() (C.uint64_t, C.uint64_t) {
	return C.uint64_t(binary.BigEndian.Uint64(u[:8])), C.uint64_t(binary.BigEndian.Uint64(u[8:]))
}

// argBuf lays out strings back to back for the C side: in sc.args when
// they fit, else in a new slice.
type argBuf struct {
	b []byte
}

func (a *argBuf) init(sc *scratch, size int) {
	if size <= len(sc.args) {
		a.b = sc.args[:0]
	} else {
		a.b = make([]byte, 0, size)
	}
}

func (a *argBuf) add(s string) { a.b = append(a.b, s...) }

// ptr points at the start; never NULL, even for empty input, since the
// engine treats NULL as a missing argument.
func (a *argBuf) ptr() *C.char {
	return (*C.char)(unsafe.Pointer(&a.b[:1][0]))
}

// addMetadata appends keys and values and records their lengths. It
// reports false when there are more keys than the engine allows.
func (a *argBuf) addMetadata(sc *scratch, md map[string]string) bool {
	if len(md) > C.AFSM_METADATA_KEYS_MAX {
		return false
	}
	i := 0
	for k, v := range md {
		a.add(k)
		a.add(v)
		sc.lens[2*i] = C.size_t(len(k))
		sc.lens[2*i+1] = C.size_t(len(v))
		i++
	}
	return true
}

// metadataKeysError is the engine's error for a map over
// AFSM_METADATA_KEYS_MAX keys, which the shim cannot pass.
func metadataKeysError(op string, keys int) error {
	return argError(op, C.AFSM_ETOOLONG, "metadata: %d keys, must be at most %d", keys, C.AFSM_METADATA_KEYS_MAX)
}

func metadataSize(md map[string]string) int {
	n := 0
	for k, v := range md {
		n += len(k) + len(v)
	}
	return n
}

func cloneMetadata(md map[string]string) map[string]string {
	out := make(map[string]string, len(md))
	for k, v := range md {
		out[k] = v
	}
	return out
}

// parseMetadata decodes key NUL value NUL pairs. The keys and values are
// substrings of one string copied from b: one allocation instead of two
// per entry.
func parseMetadata(b []byte, count int) map[string]string {
	out := make(map[string]string, count)
	all := string(b)
	for len(all) > 0 {
		k := strings.IndexByte(all, 0)
		if k < 0 {
			break
		}
		rest := all[k+1:]
		v := strings.IndexByte(rest, 0)
		if v < 0 {
			break
		}
		out[all[:k]] = rest[:v]
		all = rest[v+1:]
	}
	return out
}

func cBytes(p *C.char, n int) []byte {
	if n == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(p)), n)
}

// sessionFromC copies an afsm_session_info (Go memory) and its metadata
// into a new Session.
func (m *Manager) sessionFromC(info *C.afsm_session_info, md []byte) *Session {
	s := &Session{
		SessionID:    *(*UUID)(unsafe.Pointer(&info.session_id)),
		ConnectionID: *(*UUID)(unsafe.Pointer(&info.connection_id)),
		UserID:       string(cBytes(&info.user_id[0], int(info.user_id_len))),
		ClientPort:   uint32(info.client_port),
		State:        State(info.state),
		CreatedAt:    time.Unix(0, int64(info.created_at_ns)),
		LastActiveAt: time.Unix(0, int64(info.last_active_at_ns)),
		ExpiresAt:    time.Unix(0, int64(info.expires_at_ns)),
		Timeout:      time.Duration(info.timeout_ms) * time.Millisecond,
		Stats:        statsFromC(&info.stats),

		TokenGeneration: uint32(info.token_generation),
	}
	ip := &info.client_ip
	switch ip.family {
	case 4:
		s.ClientIP = netip.AddrFrom4(*(*[4]byte)(unsafe.Pointer(&ip.bytes[0]))).String()
	case 6:
		s.ClientIP = netip.AddrFrom16(*(*[16]byte)(unsafe.Pointer(&ip.bytes[0]))).String()
	}
	addr := cBytes(&info.server_addr[0], int(info.server_addr_len))
	if string(addr) == m.serverAddr { // no allocation: the compiler compares in place
		s.ServerAddr = m.serverAddr
	} else {
		s.ServerAddr = string(addr)
	}
	if md != nil {
		s.Metadata = parseMetadata(md, int(info.metadata_count))
	} else {
		s.Metadata = make(map[string]string)
	}
	return s
}

// metadataOf returns the metadata bytes a shim call left in sc, fetching
// them again with a large enough buffer if sc.md was short (it never is
// for metadata within the engine's bounds).
func (m *Manager) metadataOf(op string, sc *scratch) ([]byte, error) {
	switch sc.mdStatus {
	case C.AFSM_OK, C.AFSM_EEXPIRED:
		return sc.md[:sc.mdLen], nil
	case C.AFSM_EBUFFER:
		for need := int(sc.mdLen); ; {
			buf := make([]byte, need+1)
			var needed, count C.size_t
			st := C.afsm_session_get_metadata(m.eng, &sc.info.session_id, (*C.char)(unsafe.Pointer(&buf[0])),
				C.size_t(len(buf)), &needed, &count)
			if st == C.AFSM_EBUFFER {
				need = int(needed)
				continue
			}
			if st != C.AFSM_OK && st != C.AFSM_EEXPIRED {
				return nil, statusError(op, st)
			}
			return buf[:needed], nil
		}
	default: // deleted between the two reads
		return nil, statusError(op, sc.mdStatus)
	}
}

// CreateOptions are the arguments of CreateSessionWithOptions.
type CreateOptions struct {
	UserID       string            // 1..256 bytes
	ClientIP     string            // v4 or v6 text
	ClientPort   uint32            // 0..65535
	ConnectionID UUID              // the transport's connection id; not nil
	Metadata     map[string]string // copied; at most 64 keys, 4096 bytes
	Timeout      time.Duration     // this session's timeout; 0: the default
	// BindToken binds the returned token to ClientIP (TokenBindIP).
	BindToken bool
}

// CreateSession creates a session in state StateConnecting with a new
// UUIDv7 id, and a token for it (as IssueToken, unbound) in the same
// crossing into C: what the client presents to ValidateToken later. The
// metadata map is copied, not kept.
//
// Errors match ErrInvalidArgument (empty user id, port over 65535, NUL in
// metadata), ErrTooLong (user id, metadata), ErrInvalidIP, ErrInvalidUUID
// (nil connection id), ErrAlreadyExists (connection id taken),
// ErrLimitExceeded (the user is at MaxSessionsPerUser under LimitReject),
// ErrOutOfMemory, ErrClosed or ctx.Err(). Should the token not be issued
// (the session expired, was closed or deleted between the two C calls),
// the session is deleted again (reason "token issue failed") and the
// token's error returned, with no Session: a failed create leaves nothing
// behind (as in Python).
func (m *Manager) CreateSession(ctx context.Context, userID, clientIP string, clientPort uint32, connID UUID,
	metadata map[string]string) (*Session, string, error) {
	return m.CreateSessionWithOptions(ctx, &CreateOptions{
		UserID: userID, ClientIP: clientIP, ClientPort: clientPort, ConnectionID: connID, Metadata: metadata,
	})
}

// CreateSessionWithOptions is CreateSession with a per-session timeout
// and, with BindToken, a token bound to the client IP.
func (m *Manager) CreateSessionWithOptions(ctx context.Context, o *CreateOptions) (*Session, string, error) {
	const op = "CreateSession"
	if o == nil {
		return nil, "", argError(op, C.AFSM_ENULL, "options: nil")
	}
	timeoutMs, ok := durationMs(o.Timeout)
	if !ok {
		return nil, "", argError(op, C.AFSM_EINVAL, "timeout_ms: %s, must not be negative (0: the default)",
			msText(o.Timeout))
	}
	if err := textError(op, "user_id", o.UserID); err != nil {
		return nil, "", err
	}
	if err := metadataTextError(op, o.Metadata); err != nil {
		return nil, "", err
	}
	s, err := m.enter(ctx, o.ConnectionID[15])
	if err != nil {
		return nil, "", err
	}
	defer s.leave()
	sc := getScratch()
	defer putScratch(sc)
	var a argBuf
	a.init(sc, len(o.UserID)+len(o.ClientIP)+metadataSize(o.Metadata))
	a.add(o.UserID)
	a.add(o.ClientIP)
	if !a.addMetadata(sc, o.Metadata) {
		return nil, "", metadataKeysError(op, len(o.Metadata))
	}
	var flags C.uint32_t
	if o.BindToken {
		flags = C.AFSM_TOKEN_BIND_IP
	}
	hi, lo := o.ConnectionID.halves()
	st := C.afsmgo_create(m.eng, a.ptr(), C.size_t(len(o.UserID)), C.size_t(len(o.ClientIP)), &sc.lens[0],
		C.size_t(len(o.Metadata)), C.uint32_t(o.ClientPort), hi, lo, C.uint64_t(timeoutMs), flags, &sc.info,
		(*C.char)(unsafe.Pointer(&sc.tok[0])), &sc.tokLen)
	if st != C.AFSM_OK {
		return nil, "", statusError(op, st)
	}
	sess := m.sessionFromC(&sc.info, nil)
	sess.Metadata = cloneMetadata(o.Metadata)
	return sess, string(sc.tok[:sc.tokLen]), nil
}

// IssueToken seals another token for the session's current generation;
// earlier tokens stay valid. With TokenBindIP the token is valid only from
// the session's client IP. Lock-free. Errors match ErrSessionNotFound,
// ErrSessionExpired, ErrSessionClosed, ErrInvalidArgument (options),
// ErrClosed or ctx.Err().
func (m *Manager) IssueToken(ctx context.Context, sessionID UUID, opts ...TokenOption) (string, error) {
	return m.token(ctx, "IssueToken", sessionID, 0, opts)
}

// RotateToken moves the session to a new token generation, which revokes
// every token issued before (they fail with ErrTokenRevoked), and returns
// a token of the new one. Options and errors as for IssueToken.
func (m *Manager) RotateToken(ctx context.Context, sessionID UUID, opts ...TokenOption) (string, error) {
	return m.token(ctx, "RotateToken", sessionID, 1, opts)
}

func (m *Manager) token(ctx context.Context, op string, id UUID, rotate C.int, opts []TokenOption) (string, error) {
	var flags C.uint32_t
	for _, o := range opts {
		flags |= C.uint32_t(o)
	}
	s, err := m.enter(ctx, id[15])
	if err != nil {
		return "", err
	}
	defer s.leave()
	sc := getScratch()
	defer putScratch(sc)
	hi, lo := id.halves()
	st := C.afsmgo_token(m.engp, hi, lo, flags, rotate, (*C.char)(unsafe.Pointer(&sc.tok[0])), &sc.tokLen)
	if st != C.AFSM_OK {
		return "", statusError(op, st)
	}
	return string(sc.tok[:sc.tokLen]), nil
}

// ValidateToken checks a token a client presented from clientIP and
// returns a copy of its session (metadata included, fetched in the same
// crossing into C). clientIP may be "" when unknown, but a token bound to
// an IP then fails with ErrIPMismatch. Lock-free; the cryptographic check
// is constant-time.
//
// Every token failure matches ErrInvalidToken and one of
// ErrTokenMalformed (truncated, garbled), ErrTokenForged (altered, or
// sealed by another key under a known id), ErrUnknownKey, ErrKeyRemoved,
// ErrTokenRevoked (rotated), ErrIPMismatch, ErrSessionNotFound,
// ErrSessionExpired, ErrSessionClosed (ErrSessionNotFound also when the
// session is deleted between the token check and the read of its
// metadata, as in Python). Other errors: ErrInvalidIP
// (clientIP malformed), ErrOutOfMemory, ErrClosed, ctx.Err().
func (m *Manager) ValidateToken(ctx context.Context, token, clientIP string) (*Session, error) {
	const op = "ValidateToken"
	var hint byte
	if len(token) > 0 {
		hint = token[len(token)-1] // random: spreads the gate's stripes
	}
	s, err := m.enter(ctx, hint)
	if err != nil {
		return nil, err
	}
	defer s.leave()
	sc := getScratch()
	defer putScratch(sc)
	var a argBuf
	a.init(sc, len(token)+len(clientIP))
	a.add(token)
	a.add(clientIP)
	var hasIP C.int
	if clientIP != "" {
		hasIP = 1
	}
	st := C.afsmgo_validate(m.engp, a.ptr(), C.size_t(len(token)), C.size_t(len(clientIP)), hasIP, &sc.info,
		(*C.char)(unsafe.Pointer(&sc.md[0])), C.size_t(len(sc.md)), &sc.mdLen, &sc.mdStatus)
	if st != C.AFSM_OK {
		return nil, tokenError(op, st)
	}
	var md []byte
	if sc.info.metadata_count != 0 {
		if md, err = m.metadataOf(op, sc); err != nil {
			if e, ok := err.(*Error); ok {
				if st := C.afsm_status(e.Status); st == C.AFSM_ENOTFOUND || st == C.AFSM_EEXPIRED ||
					st == C.AFSM_ECLOSED {
					e.token = true
				}
				return nil, e
			}
			return nil, err
		}
	}
	return m.sessionFromC(&sc.info, md), nil
}

// Restore re-creates a session exactly as a copy describes it (ids, user,
// client, state, timestamps, timeout, stats, token generation and
// metadata): how a service reloads a snapshot of GetSession / ListSessions
// copies after a restart so that sessions and their tokens survive it
// (give the new Manager the same keys). The deadline is LastActiveAt plus
// Timeout, by the wall clock. ServerAddr and ExpiresAt are not read.
//
// Errors match ErrSessionExpired (it expired meanwhile: nothing done),
// ErrAlreadyExists (its id or connection id is taken), ErrInvalidArgument
// (state, port, zero timeout or token generation), ErrInvalidUUID,
// ErrInvalidIP, ErrTooLong, ErrLimitExceeded, ErrOutOfMemory, ErrClosed or
// ctx.Err().
func (m *Manager) Restore(ctx context.Context, sess *Session) error {
	const op = "Restore"
	if sess == nil {
		return argError(op, C.AFSM_ENULL, "session: nil")
	}
	if err := textError(op, "user_id", sess.UserID); err != nil {
		return err
	}
	if err := metadataTextError(op, sess.Metadata); err != nil {
		return err
	}
	if len(sess.UserID) > C.AFSM_USER_ID_MAX {
		return argError(op, C.AFSM_ETOOLONG, "session.user_id: %d bytes, must be 1..%d", len(sess.UserID),
			C.AFSM_USER_ID_MAX)
	}
	ip, err := netip.ParseAddr(sess.ClientIP)
	if err != nil || ip.Zone() != "" {
		return argError(op, C.AFSM_EIP, "session.client_ip: %q, must be an IPv4 or IPv6 address", sess.ClientIP)
	}
	ip = ip.Unmap()
	if sess.Timeout <= 0 {
		return argError(op, C.AFSM_EINVAL, "session.timeout_ms: %s, must be positive", msText(sess.Timeout))
	}
	if sess.ClientPort > 65535 {
		return argError(op, C.AFSM_EINVAL, "session.client_port: %d, must be 0..65535", sess.ClientPort)
	}
	timeoutMs, _ := durationMs(sess.Timeout)
	s, err := m.enter(ctx, sess.SessionID[15])
	if err != nil {
		return err
	}
	defer s.leave()
	sc := getScratch()
	defer putScratch(sc)
	info := &sc.info
	*info = C.afsm_session_info{version: C.AFSM_SESSION_INFO_VERSION}
	defer func() { sc.info = C.afsm_session_info{version: C.AFSM_SESSION_INFO_VERSION} }()
	info.state = C.uint32_t(sess.State)
	*(*UUID)(unsafe.Pointer(&info.session_id)) = sess.SessionID
	*(*UUID)(unsafe.Pointer(&info.connection_id)) = sess.ConnectionID
	if ip.Is4() {
		info.client_ip.family = 4
		b := ip.As4()
		copy((*[16]byte)(unsafe.Pointer(&info.client_ip.bytes[0]))[:], b[:])
	} else {
		info.client_ip.family = 6
		*(*[16]byte)(unsafe.Pointer(&info.client_ip.bytes[0])) = ip.As16()
	}
	info.client_port = C.uint16_t(sess.ClientPort)
	info.user_id_len = C.uint32_t(len(sess.UserID))
	copy((*[C.AFSM_USER_ID_MAX + 1]byte)(unsafe.Pointer(&info.user_id[0]))[:], sess.UserID)
	info.created_at_ns = C.int64_t(sess.CreatedAt.UnixNano())
	info.last_active_at_ns = C.int64_t(sess.LastActiveAt.UnixNano())
	info.expires_at_ns = C.int64_t(sess.ExpiresAt.UnixNano())
	info.timeout_ms = C.uint64_t(timeoutMs)
	info.stats = sess.Stats.toC()
	info.token_generation = C.uint32_t(sess.TokenGeneration)
	var a argBuf
	a.init(sc, metadataSize(sess.Metadata))
	if !a.addMetadata(sc, sess.Metadata) {
		return metadataKeysError(op, len(sess.Metadata))
	}
	return statusError(op, C.afsmgo_restore(m.eng, info, a.ptr(), &sc.lens[0], C.size_t(len(sess.Metadata))))
}

// GetSession returns a copy of a session. Errors match ErrSessionNotFound
// (also when the session is deleted between the read of its fields and
// the read of its metadata, two C calls: it no longer exists when the call
// returns, as in Python), ErrSessionExpired (its deadline passed, even
// before the reaper removed it), ErrClosed or ctx.Err().
func (m *Manager) GetSession(ctx context.Context, sessionID UUID) (*Session, error) {
	return m.get(ctx, "GetSession", sessionID, false)
}

// GetSessionByConnection is GetSession by the transport's connection id.
func (m *Manager) GetSessionByConnection(ctx context.Context, connID UUID) (*Session, error) {
	return m.get(ctx, "GetSessionByConnection", connID, true)
}

func (m *Manager) get(ctx context.Context, op string, id UUID, byConn bool) (*Session, error) {
	s, err := m.enter(ctx, id[15])
	if err != nil {
		return nil, err
	}
	defer s.leave()
	sc := getScratch()
	defer putScratch(sc)
	var bc C.int
	if byConn {
		bc = 1
	}
	hi, lo := id.halves()
	st := C.afsmgo_get(m.engp, hi, lo, bc, &sc.info, (*C.char)(unsafe.Pointer(&sc.md[0])), C.size_t(len(sc.md)),
		&sc.mdLen, &sc.mdStatus)
	if st != C.AFSM_OK {
		return nil, statusError(op, st)
	}
	var md []byte
	if sc.info.metadata_count != 0 {
		if md, err = m.metadataOf(op, sc); err != nil {
			return nil, err
		}
	}
	return m.sessionFromC(&sc.info, md), nil
}

// UpdateSession changes a session's state (if state is not nil), merges
// metadata into its map (if not empty: the given keys are set, the others
// kept) and sets its stats to absolute values (if stats is not nil), all
// or nothing, and returns the result. Allowed state changes:
// connecting->active, active<->idle, active/idle->disconnecting,
// any->closed; setting StateClosed removes the session (the result is its
// last copy, metadata included: read just before the close, in the same
// crossing, since a removed session's metadata cannot be read; as in
// Python).
//
// Errors match ErrSessionNotFound (also when the session is deleted
// between the update and the read of the result's metadata, two C calls:
// it no longer exists when the call returns, as in Python),
// ErrSessionExpired, ErrInvalidTransition, ErrInvalidArgument (state),
// ErrTooLong (metadata), ErrOutOfMemory, ErrClosed or ctx.Err().
func (m *Manager) UpdateSession(ctx context.Context, sessionID UUID, state *State, metadata map[string]string,
	stats *Stats) (*Session, error) {
	var fields C.uint32_t
	if len(metadata) > 0 {
		fields |= C.AFSM_UPDATE_METADATA_MERGE
	}
	return m.update(ctx, "UpdateSession", sessionID, fields, state, metadata, stats)
}

// ReplaceMetadata makes metadata the session's whole metadata map (nil or
// empty clears it) and returns the result. Errors as for UpdateSession.
func (m *Manager) ReplaceMetadata(ctx context.Context, sessionID UUID, metadata map[string]string) (*Session, error) {
	return m.update(ctx, "ReplaceMetadata", sessionID, C.AFSM_UPDATE_METADATA_REPLACE, nil, metadata, nil)
}

func (m *Manager) update(ctx context.Context, op string, id UUID, fields C.uint32_t, state *State,
	metadata map[string]string, stats *Stats) (*Session, error) {
	if err := metadataTextError(op, metadata); err != nil {
		return nil, err
	}
	s, err := m.enter(ctx, id[15])
	if err != nil {
		return nil, err
	}
	defer s.leave()
	sc := getScratch()
	defer putScratch(sc)
	var cstate C.uint32_t
	if state != nil {
		fields |= C.AFSM_UPDATE_STATE
		cstate = C.uint32_t(*state)
	}
	var cstats *C.afsm_stats
	if stats != nil {
		fields |= C.AFSM_UPDATE_STATS
		cs := stats.toC()
		cstats = &cs
	}
	var a argBuf
	a.init(sc, metadataSize(metadata))
	if !a.addMetadata(sc, metadata) {
		return nil, metadataKeysError(op, len(metadata))
	}
	hi, lo := id.halves()
	st := C.afsmgo_update(m.eng, hi, lo, fields, cstate, a.ptr(), &sc.lens[0], C.size_t(len(metadata)), cstats,
		&sc.info, (*C.char)(unsafe.Pointer(&sc.md[0])), C.size_t(len(sc.md)), &sc.mdLen, &sc.mdStatus)
	if st != C.AFSM_OK {
		return nil, statusError(op, st)
	}
	var md []byte
	switch {
	case sc.mdStatus == C.AFSM_OK || sc.mdStatus == C.AFSM_EEXPIRED:
		md = sc.md[:sc.mdLen]
	case sc.mdStatus == C.AFSM_EBUFFER:
		if State(sc.info.state) != StateClosed {
			if md, err = m.metadataOf(op, sc); err != nil {
				return nil, err
			}
		}
	default:
		// Deleted between the update and the metadata read: it no longer
		// exists, and a copy would show it without its metadata.
		return nil, statusError(op, sc.mdStatus)
	}
	return m.sessionFromC(&sc.info, md), nil
}

// Heartbeat moves the session's deadline to now + its timeout (capped by
// MaxLifetime) and returns the time left. Lock-free and allocation-free.
// Errors match ErrSessionNotFound, ErrSessionExpired, ErrSessionClosed,
// ErrClosed or ctx.Err().
func (m *Manager) Heartbeat(ctx context.Context, sessionID UUID) (time.Duration, error) {
	s, err := m.enterHot(ctx, sessionID[15])
	if err != nil {
		return 0, err
	}
	hi, lo := sessionID.halves()
	r := C.afsmgo_heartbeat(m.engp, hi, lo)
	s.leaveHot()
	if r < 0 {
		return 0, codeError("Heartbeat", C.afsm_status(r))
	}
	return time.Duration(r) * time.Millisecond, nil
}

// AddStats adds delta's counters to the session's atomically; a non-zero
// CurrentRTTMs replaces the RTT. Lock-free and allocation-free. Errors
// match ErrSessionNotFound, ErrSessionExpired, ErrClosed or ctx.Err().
func (m *Manager) AddStats(ctx context.Context, sessionID UUID, delta Stats) error {
	s, err := m.enterHot(ctx, sessionID[15])
	if err != nil {
		return err
	}
	hi, lo := sessionID.halves()
	st := C.afsmgo_add_stats(m.engp, hi, lo, C.uint64_t(delta.PacketsSent), C.uint64_t(delta.PacketsReceived),
		C.uint64_t(delta.BytesSent), C.uint64_t(delta.BytesReceived), C.uint64_t(delta.Retransmissions),
		C.uint32_t(delta.CurrentRTTMs))
	s.leaveHot()
	if st != C.AFSM_OK {
		return codeError("AddStats", st)
	}
	return nil
}

// DeleteSession removes a session from every index and fires EventDeleted
// with reason ("" reports "deleted"). An expired session not yet reaped is
// deleted too. Errors match ErrSessionNotFound, ErrTooLong (reason over 256
// bytes), ErrClosed or ctx.Err().
func (m *Manager) DeleteSession(ctx context.Context, sessionID UUID, reason string) error {
	if err := textError("DeleteSession", "reason", reason); err != nil {
		return err
	}
	s, err := m.enter(ctx, sessionID[15])
	if err != nil {
		return err
	}
	defer s.leave()
	sc := getScratch()
	defer putScratch(sc)
	var a argBuf
	a.init(sc, len(reason))
	a.add(reason)
	hi, lo := sessionID.halves()
	return statusError("DeleteSession", C.afsmgo_delete(m.eng, hi, lo, a.ptr(), C.size_t(len(reason))))
}

// DeleteUserSessions deletes every session of a user ("log out
// everywhere") and returns how many it deleted; none is not an error.
// Errors match ErrInvalidArgument (empty user id), ErrTooLong, ErrClosed
// or ctx.Err().
func (m *Manager) DeleteUserSessions(ctx context.Context, userID, reason string) (int, error) {
	if err := textError("DeleteUserSessions", "user_id", userID); err != nil {
		return 0, err
	}
	if err := textError("DeleteUserSessions", "reason", reason); err != nil {
		return 0, err
	}
	s, err := m.enter(ctx, 0)
	if err != nil {
		return 0, err
	}
	defer s.leave()
	sc := getScratch()
	defer putScratch(sc)
	var a argBuf
	a.init(sc, len(userID)+len(reason))
	a.add(userID)
	a.add(reason)
	base := a.ptr()
	var reasonPtr *C.char
	if len(reason) > 0 {
		reasonPtr = (*C.char)(unsafe.Pointer(&a.b[len(userID)]))
	}
	var n C.size_t
	st := C.afsm_session_delete_by_user(m.eng, base, C.size_t(len(userID)), reasonPtr, C.size_t(len(reason)), &n)
	return int(n), statusError("DeleteUserSessions", st)
}
