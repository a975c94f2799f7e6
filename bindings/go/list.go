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

// SessionFilter selects sessions for ListSessions. The zero value (or a
// nil pointer) selects every session.
type SessionFilter struct {
	UserID        string    // "": every user
	State         State     // StateAny: every state
	CreatedAfter  time.Time // exclusive; zero: no bound
	CreatedBefore time.Time // exclusive; zero: no bound
	// Limit caps the sessions returned; 0 returns all of them (the binding
	// pages through the engine internally).
	Limit int
	// Offset skips this many matches (after Cursor), for clients of the
	// old offset/limit API. Cursor paging is the stable one.
	Offset int
	// Cursor: only sessions after this id (Page.NextCursor of the
	// previous page); Nil starts from the beginning.
	Cursor UUID
}

// Page is one page of ListSessionsPage.
type Page struct {
	Sessions []*Session
	// Total is the number of matches ignoring Cursor, Offset and Limit.
	Total int
	// NextCursor continues the listing; Nil when there is nothing after.
	NextCursor UUID
}

// listPageMax bounds one engine call when the caller set no Limit (each
// entry is about 640 bytes of scratch).
const listPageMax = 4096

// ListSessions lists matching sessions in id (= creation) order, skipping
// expired ones and ones deleted between the listing and the read of their
// metadata (Total still counts those; the page is filled up from the
// sessions after them), as the Python binding does, and returns them with
// the total number of matches. A nil
// filter lists everything. Sessions created or deleted during the listing
// may or may not appear; every session that exists throughout appears
// exactly once. Errors match ErrInvalidArgument (negative Limit or Offset,
// bad State), ErrTooLong (UserID), ErrClosed or ctx.Err().
func (m *Manager) ListSessions(ctx context.Context, filter *SessionFilter) ([]*Session, int, error) {
	p, err := m.ListSessionsPage(ctx, filter)
	if err != nil {
		return nil, 0, err
	}
	return p.Sessions, p.Total, nil
}

// ListSessionsPage is ListSessions that also returns the cursor of the
// next page.
func (m *Manager) ListSessionsPage(ctx context.Context, filter *SessionFilter) (*Page, error) {
	const op = "ListSessions"
	f := SessionFilter{}
	if filter != nil {
		f = *filter
	}
	if f.Limit < 0 {
		return nil, argError(op, C.AFSM_EINVAL, "limit: %d, must not be negative (0: every match)", f.Limit)
	}
	if f.Offset < 0 {
		return nil, argError(op, C.AFSM_EINVAL, "offset: %d, must not be negative", f.Offset)
	}
	if err := textError(op, "user_id", f.UserID); err != nil {
		return nil, err
	}
	var after, before int64
	if !f.CreatedAfter.IsZero() {
		after = f.CreatedAfter.UnixNano()
	}
	if !f.CreatedBefore.IsZero() {
		before = f.CreatedBefore.UnixNano()
	}
	user := []byte(f.UserID)
	hasUser := C.int(0)
	var userPtr *C.char
	if len(f.UserID) > 0 {
		hasUser = 1
		userPtr = (*C.char)(unsafe.Pointer(&user[0]))
	}
	page := &Page{Total: -1}
	cursor := f.Cursor
	offset := uint64(f.Offset)
	var infos []C.afsm_session_info
	for {
		want := listPageMax
		if f.Limit > 0 {
			want = f.Limit - len(page.Sessions)
			if want > C.AFSM_LIST_LIMIT_MAX {
				want = C.AFSM_LIST_LIMIT_MAX
			}
		}
		if infos == nil || len(infos) < want {
			infos = make([]C.afsm_session_info, want)
			for i := range infos {
				infos[i].version = C.AFSM_SESSION_INFO_VERSION
			}
		}
		var count C.size_t
		var total C.uint64_t
		var next UUID
		s, err := m.enter(ctx, 0)
		if err != nil {
			return nil, err
		}
		st := C.afsmgo_list(m.eng, C.uint32_t(f.State), userPtr, C.size_t(len(user)), hasUser, C.int64_t(after),
			C.int64_t(before), cursor.c(), C.uint64_t(offset), C.uint32_t(want), &infos[0], &count, &total,
			next.c())
		if st != C.AFSM_OK {
			err := statusError(op, st)
			s.leave()
			return nil, err
		}
		got := infos[:count]
		if m.listedHook != nil {
			ids := make([]UUID, len(got))
			for i := range got {
				ids[i] = *(*UUID)(unsafe.Pointer(&got[i].session_id))
			}
			m.listedHook(ids)
		}
		mdBytes := 0
		for i := range got {
			mdBytes += int(got[i].metadata_bytes)
		}
		mds, mdErrs := m.metadataMany(op, got, mdBytes)
		s.leave()
		if page.Total < 0 {
			page.Total = int(total)
		}
		for i := range got {
			if mdErrs[i] != nil {
				continue // deleted between the listing and the metadata read
			}
			page.Sessions = append(page.Sessions, m.sessionFromC(&got[i], mds[i]))
		}
		page.NextCursor = next
		offset = 0
		if next.IsNil() || count == 0 || (f.Limit > 0 && len(page.Sessions) >= f.Limit) {
			break
		}
		cursor = next
	}
	if page.Sessions == nil {
		page.Sessions = []*Session{}
	}
	return page, nil
}
