package afsm

/*
#include "shim.h"
*/
import "C"

import (
	"context"
	"time"
	"unsafe"
)

// The batch calls cross into C once per AFSM_BATCH_MAX (65536) ids. Their
// first result is aligned with ids; the []error holds each item's error
// (nil on success); the final error is for the call as a whole (closed
// manager, cancelled context, mismatched lengths).

// checkEmpty gives an empty batch, which crosses into C zero times, the
// errors of every other call: a closed Manager, a cancelled ctx.
func (m *Manager) checkEmpty(ctx context.Context, ids []UUID) error {
	if len(ids) > 0 {
		return nil // each chunk enters the gate itself
	}
	s, err := m.enterHot(ctx, 0)
	if err != nil {
		return err
	}
	s.leaveHot()
	return nil
}

// GetMany is GetSession for many ids: sessions[i] is nil where errs[i] is
// not. A session deleted between the batch read and the read of its
// metadata gets ErrSessionNotFound, as an id that never existed (as in
// Python).
func (m *Manager) GetMany(ctx context.Context, ids []UUID) ([]*Session, []error, error) {
	const op = "GetMany"
	if err := m.checkEmpty(ctx, ids); err != nil {
		return nil, nil, err
	}
	out := make([]*Session, len(ids))
	errs := make([]error, len(ids))
	for start := 0; start < len(ids); start += C.AFSM_BATCH_MAX {
		end := start + C.AFSM_BATCH_MAX
		if end > len(ids) {
			end = len(ids)
		}
		if err := m.getChunk(ctx, op, ids[start:end], out[start:end], errs[start:end]); err != nil {
			return nil, nil, err
		}
	}
	return out, errs, nil
}

func (m *Manager) getChunk(ctx context.Context, op string, ids []UUID, out []*Session, errs []error) error {
	s, err := m.enter(ctx, 0)
	if err != nil {
		return err
	}
	defer s.leave()
	n := len(ids)
	infos := make([]C.afsm_session_info, n)
	for i := range infos {
		infos[i].version = C.AFSM_SESSION_INFO_VERSION
	}
	statuses := make([]C.afsm_status, n)
	st := C.afsm_session_get_batch(m.eng, (*C.afsm_uuid)(unsafe.Pointer(&ids[0])), C.size_t(n), &infos[0],
		&statuses[0])
	if st != C.AFSM_OK {
		return statusError(op, st)
	}
	mdBytes := 0
	for i := range infos {
		if statuses[i] != C.AFSM_OK {
			infos[i].metadata_count = 0 // fetch no metadata for failed items
		}
		mdBytes += int(infos[i].metadata_bytes)
	}
	mds, mdErrs := m.metadataMany(op, infos, mdBytes)
	for i := range ids {
		switch {
		case statuses[i] != C.AFSM_OK:
			errs[i] = itemError(op, statuses[i])
		case mdErrs[i] != nil:
			errs[i] = mdErrs[i]
		default:
			out[i] = m.sessionFromC(&infos[i], mds[i])
		}
	}
	return nil
}

// metadataMany fetches the metadata of every info with metadata_count > 0,
// in one crossing (plus one per item whose metadata grew meanwhile).
// The caller holds the gate.
func (m *Manager) metadataMany(op string, infos []C.afsm_session_info, sizeHint int) ([][]byte, []error) {
	n := len(infos)
	mds := make([][]byte, n)
	errs := make([]error, n)
	if n == 0 {
		return mds, errs
	}
	buf := make([]byte, sizeHint+1)
	offs := make([]C.size_t, n)
	lens := make([]C.size_t, n)
	sts := make([]C.afsm_status, n)
	C.afsmgo_metadata_many(m.eng, &infos[0], C.size_t(n), (*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)),
		&offs[0], &lens[0], &sts[0])
	for i := range infos {
		if infos[i].metadata_count == 0 {
			continue
		}
		switch sts[i] {
		case C.AFSM_OK, C.AFSM_EEXPIRED:
			mds[i] = buf[offs[i] : offs[i]+lens[i]]
		case C.AFSM_EBUFFER:
			sc := getScratch()
			sc.info.session_id = infos[i].session_id
			sc.mdStatus, sc.mdLen = C.AFSM_EBUFFER, lens[i]
			mds[i], errs[i] = m.metadataOf(op, sc)
			putScratch(sc)
		default:
			errs[i] = itemError(op, sts[i])
		}
	}
	return mds, errs
}

// HeartbeatMany is Heartbeat for many ids; remaining[i] is 0 where errs[i]
// is not nil.
func (m *Manager) HeartbeatMany(ctx context.Context, ids []UUID) ([]time.Duration, []error, error) {
	const op = "HeartbeatMany"
	if err := m.checkEmpty(ctx, ids); err != nil {
		return nil, nil, err
	}
	remaining := make([]time.Duration, len(ids))
	errs := make([]error, len(ids))
	ms := make([]C.uint64_t, len(ids))
	statuses := make([]C.afsm_status, len(ids))
	for start := 0; start < len(ids); start += C.AFSM_BATCH_MAX {
		end := start + C.AFSM_BATCH_MAX
		if end > len(ids) {
			end = len(ids)
		}
		s, err := m.enter(ctx, 0)
		if err != nil {
			return nil, nil, err
		}
		st := C.afsm_session_heartbeat_batch(m.eng, (*C.afsm_uuid)(unsafe.Pointer(&ids[start])),
			C.size_t(end-start), &ms[start], &statuses[start])
		err = statusError(op, st)
		s.leave()
		if err != nil {
			return nil, nil, err
		}
	}
	for i := range ids {
		if statuses[i] != C.AFSM_OK {
			errs[i] = itemError(op, statuses[i])
		} else {
			remaining[i] = time.Duration(ms[i]) * time.Millisecond
		}
	}
	return remaining, errs, nil
}

// AddStatsMany is AddStats for many ids; deltas must be as long as ids
// (else an error matching ErrInvalidArgument).
func (m *Manager) AddStatsMany(ctx context.Context, ids []UUID, deltas []Stats) ([]error, error) {
	const op = "AddStatsMany"
	if len(deltas) != len(ids) {
		return nil, argError(op, C.AFSM_EINVAL, "deltas: %d items, must be as many as ids (%d)", len(deltas), len(ids))
	}
	if err := m.checkEmpty(ctx, ids); err != nil {
		return nil, err
	}
	errs := make([]error, len(ids))
	cd := make([]C.afsm_stats, len(ids))
	for i := range deltas {
		cd[i] = deltas[i].toC()
	}
	statuses := make([]C.afsm_status, len(ids))
	for start := 0; start < len(ids); start += C.AFSM_BATCH_MAX {
		end := start + C.AFSM_BATCH_MAX
		if end > len(ids) {
			end = len(ids)
		}
		s, err := m.enter(ctx, 0)
		if err != nil {
			return nil, err
		}
		st := C.afsm_session_add_stats_batch(m.eng, (*C.afsm_uuid)(unsafe.Pointer(&ids[start])),
			&cd[start], C.size_t(end-start), &statuses[start])
		err = statusError(op, st)
		s.leave()
		if err != nil {
			return nil, err
		}
	}
	for i := range ids {
		if statuses[i] != C.AFSM_OK {
			errs[i] = itemError(op, statuses[i])
		}
	}
	return errs, nil
}
