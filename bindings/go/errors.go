package afsm

/*
#include "afsm.h"
*/
import "C"

import (
	"errors"
	"fmt"
)

// Sentinel errors, for errors.Is. Every error that comes from the engine is
// an *Error, which matches the sentinel of its status and, for the
// specific statuses below, the general one too (ErrTooLong is also
// ErrInvalidArgument; ErrTokenRevoked is also ErrInvalidToken).
var (
	// ErrInvalidArgument: an argument is missing, out of range or malformed.
	ErrInvalidArgument = errors.New("afsm: invalid argument")
	// ErrTooLong: a string or the metadata exceeds its bound (also ErrInvalidArgument).
	ErrTooLong = errors.New("afsm: argument too long")
	// ErrInvalidUUID: a UUID is malformed, or a required UUID is nil (also ErrInvalidArgument).
	ErrInvalidUUID = errors.New("afsm: invalid UUID")
	// ErrInvalidIP: an IP address is malformed (also ErrInvalidArgument).
	ErrInvalidIP = errors.New("afsm: invalid IP address")
	// ErrVersion: a struct version the library does not know; a binding
	// and library mismatch (also ErrInvalidArgument).
	ErrVersion = errors.New("afsm: struct version not supported by the library")
	// ErrOutOfMemory: an allocation failed; nothing was changed.
	ErrOutOfMemory = errors.New("afsm: out of memory")
	// ErrSessionNotFound: no such session.
	ErrSessionNotFound = errors.New("afsm: session not found")
	// ErrSessionExpired: the session's deadline has passed.
	ErrSessionExpired = errors.New("afsm: session expired")
	// ErrAlreadyExists: the connection id already has a session.
	ErrAlreadyExists = errors.New("afsm: connection already has a session")
	// ErrInvalidTransition: the state change is not allowed from the current state.
	ErrInvalidTransition = errors.New("afsm: invalid state transition")
	// ErrSessionClosed: the session is closed and cannot be revived.
	ErrSessionClosed = errors.New("afsm: session closed")
	// ErrLimitExceeded: the user is at the per-user session limit.
	ErrLimitExceeded = errors.New("afsm: session limit exceeded")
	// ErrBusy: the engine still has pinned handles.
	ErrBusy = errors.New("afsm: engine busy")
	// ErrInvalidToken: ValidateToken refused the token. Every token failure
	// matches it, besides its specific sentinel: ErrTokenMalformed,
	// ErrTokenForged, ErrUnknownKey, ErrKeyRemoved, ErrTokenRevoked,
	// ErrIPMismatch, and, from ValidateToken only, ErrSessionNotFound,
	// ErrSessionExpired and ErrSessionClosed (the token was good, its session
	// is not).
	ErrInvalidToken = errors.New("afsm: invalid token")
	// ErrTokenMalformed: the token is truncated or not a token at all
	// (prefix, length, encoding) (also ErrInvalidToken).
	ErrTokenMalformed = errors.New("afsm: malformed token")
	// ErrTokenForged: the token fails authentication: forged, altered, or
	// sealed by another key under a known key id (also ErrInvalidToken).
	ErrTokenForged = errors.New("afsm: forged token")
	// ErrUnknownKey: the token's key id was never in the key ring (also ErrInvalidToken).
	ErrUnknownKey = errors.New("afsm: token key unknown")
	// ErrKeyRemoved: the token's key was removed from the key ring (also ErrInvalidToken).
	ErrKeyRemoved = errors.New("afsm: token key removed")
	// ErrTokenRevoked: the token was superseded by a rotation (also ErrInvalidToken).
	ErrTokenRevoked = errors.New("afsm: token revoked")
	// ErrIPMismatch: the token is bound to another client IP, or to one and
	// presented without (also ErrInvalidToken).
	ErrIPMismatch = errors.New("afsm: token IP mismatch")
	// ErrKeyNotFound: UseKey or RemoveKey named a key id not in the ring
	// (AFSM_EKEYNOTFOUND).
	ErrKeyNotFound = errors.New("afsm: key not in the key ring")
	// ErrKeyExists: AddKey or AddKeyFile named a key id already in the
	// ring (AFSM_EKEYEXISTS; also ErrAlreadyExists).
	ErrKeyExists = errors.New("afsm: key id already in the key ring")
	// ErrKeyInUse: RemoveKey named the current key; UseKey another first
	// (AFSM_EKEYINUSE; also ErrBusy).
	ErrKeyInUse = errors.New("afsm: key is the current key")
	// ErrKeyFile: a key file is unreadable, has the wrong size, is another
	// user's (not root's or this process's) or has loose permissions.
	ErrKeyFile = errors.New("afsm: bad key file")
	// ErrUnavailable: the store cannot be reached.
	ErrUnavailable = errors.New("afsm: store unavailable")
	// ErrInternal: a bug in the engine or the binding.
	ErrInternal = errors.New("afsm: internal error")
	// ErrClosed: the Manager (or the Handle) has been closed.
	ErrClosed = errors.New("afsm: manager closed")
	// ErrCloseInCallback: Close was called from inside OnEvent, Logger or
	// Clock; the Manager stays open.
	ErrCloseInCallback = errors.New("afsm: Close called from an OnEvent, Logger or Clock callback")
)

// Error is an error reported by the engine: its C status code, the code's
// name (afsm_status_name), the operation that failed and, for bad input,
// which argument was wrong and why.
type Error struct {
	Op     string // the Manager method, e.g. "GetSession"
	Status int    // the afsm_status, a negative AFSM_E* code
	Name   string // e.g. "AFSM_ENOTFOUND"
	Msg    string // afsm_strerror, e.g. "session not found"
	// Detail names the argument, its problem and the limit, e.g.
	// "user_id: 0 bytes, must be 1..256" (afsm_error_detail, or the
	// binding's own check); empty when the status says it all.
	Detail string

	// token: a ValidateToken failure; it matches ErrInvalidToken whatever
	// the status (session not found, expired or closed included).
	token bool
}

// Error formats the error as "afsm: Op: message: detail (NAME)", or
// "afsm: Op: message (NAME)" without a detail.
func (e *Error) Error() string {
	if e.Detail != "" {
		return fmt.Sprintf("afsm: %s: %s: %s (%s)", e.Op, e.Msg, e.Detail, e.Name)
	}
	return fmt.Sprintf("afsm: %s: %s (%s)", e.Op, e.Msg, e.Name)
}

// Is reports whether target is the sentinel of e's status, or of a more
// general class it belongs to (ErrInvalidArgument, ErrInvalidToken).
func (e *Error) Is(target error) bool {
	if target == ErrInvalidToken && e.token {
		return true
	}
	for _, s := range sentinelsOf(e.Status) {
		if s == target {
			return true
		}
	}
	return false
}

func sentinelsOf(status int) []error {
	switch status {
	case C.AFSM_ENULL, C.AFSM_EINVAL:
		return []error{ErrInvalidArgument}
	case C.AFSM_EVERSION:
		return []error{ErrVersion, ErrInvalidArgument}
	case C.AFSM_ETOOLONG:
		return []error{ErrTooLong, ErrInvalidArgument}
	case C.AFSM_EUUID:
		return []error{ErrInvalidUUID, ErrInvalidArgument}
	case C.AFSM_EIP:
		return []error{ErrInvalidIP, ErrInvalidArgument}
	case C.AFSM_ENOMEM:
		return []error{ErrOutOfMemory}
	case C.AFSM_ENOTFOUND:
		return []error{ErrSessionNotFound}
	case C.AFSM_EEXPIRED:
		return []error{ErrSessionExpired}
	case C.AFSM_EEXISTS:
		return []error{ErrAlreadyExists}
	case C.AFSM_ETRANSITION:
		return []error{ErrInvalidTransition}
	case C.AFSM_ECLOSED:
		return []error{ErrSessionClosed}
	case C.AFSM_ELIMIT:
		return []error{ErrLimitExceeded}
	case C.AFSM_EBUSY:
		return []error{ErrBusy}
	case C.AFSM_ETOKEN:
		return []error{ErrTokenForged, ErrInvalidToken}
	case C.AFSM_ETOKENKEY:
		return []error{ErrUnknownKey, ErrInvalidToken}
	case C.AFSM_EKEYREMOVED:
		return []error{ErrKeyRemoved, ErrInvalidToken}
	case C.AFSM_ETOKENFORMAT:
		return []error{ErrTokenMalformed, ErrInvalidToken}
	case C.AFSM_EREVOKED:
		return []error{ErrTokenRevoked, ErrInvalidToken}
	case C.AFSM_EIPMISMATCH:
		return []error{ErrIPMismatch, ErrInvalidToken}
	case C.AFSM_EKEYFILE:
		return []error{ErrKeyFile}
	case C.AFSM_EKEYEXISTS:
		return []error{ErrKeyExists, ErrAlreadyExists}
	case C.AFSM_EKEYNOTFOUND:
		return []error{ErrKeyNotFound}
	case C.AFSM_EKEYINUSE:
		return []error{ErrKeyInUse, ErrBusy}
	case C.AFSM_EUNAVAILABLE:
		return []error{ErrUnavailable}
	default: // AFSM_EINTERNAL, AFSM_EBUFFER (never surfaces) and unknown codes
		return []error{ErrInternal}
	}
}

// statusError turns the status of the C call just made into an *Error with
// the library's detail (afsm_error_detail); AFSM_OK gives nil. Call it
// inside the gate (see gate.enter), before the goroutine makes another
// afsm call: the detail belongs to the thread and its last call.
func statusError(op string, status C.afsm_status) error {
	if status == C.AFSM_OK {
		return nil
	}
	e := codeError(op, status)
	e.Detail = C.GoString(C.afsm_error_detail())
	return e
}

// codeError is statusError without the detail: for a status that is not
// the thread's last call's (one item of a batch, a status carried along).
func codeError(op string, status C.afsm_status) *Error {
	e := &Error{Op: op, Status: int(status)}
	if i := -int(status); i > 0 && i < len(statusNames) {
		e.Name, e.Msg = statusNames[i], statusMsgs[i]
	} else {
		e.Name = C.GoString(C.afsm_status_name(status))
		e.Msg = C.GoString(C.afsm_strerror(status))
	}
	return e
}

// itemError is codeError for one item of a batch call; nil for AFSM_OK.
func itemError(op string, status C.afsm_status) error {
	if status == C.AFSM_OK {
		return nil
	}
	return codeError(op, status)
}

// Names and messages of the codes this binding knows, fetched once so an
// error costs no extra crossings.
var statusNames, statusMsgs [-C.AFSM_EKEYINUSE + 1]string

func init() {
	for i := range statusNames {
		st := C.afsm_status(-i)
		statusNames[i] = C.GoString(C.afsm_status_name(st))
		statusMsgs[i] = C.GoString(C.afsm_strerror(st))
	}
}

// argError reports bad input the binding rejects itself, with the status
// the engine would give and a detail in the engine's style ("what: value,
// must be ..."), so callers see one kind of error.
func argError(op string, status C.afsm_status, format string, args ...interface{}) error {
	e := codeError(op, status)
	e.Detail = fmt.Sprintf(format, args...)
	return e
}

// tokenError is statusError for ValidateToken: every failure but a bad
// argument (the client IP) or an allocation failure also matches
// ErrInvalidToken.
func tokenError(op string, status C.afsm_status) error {
	err := statusError(op, status)
	if e, ok := err.(*Error); ok {
		switch status {
		case C.AFSM_ENOTFOUND, C.AFSM_EEXPIRED, C.AFSM_ECLOSED:
			e.token = true
		}
	}
	return err
}

// errorFromCode is codeError for an int code (the tests cannot use cgo).
func errorFromCode(op string, code int) error {
	if code == 0 {
		return nil
	}
	return codeError(op, C.afsm_status(code))
}

// tokenErrorFromCode is tokenError for an int code (for the tests).
func tokenErrorFromCode(op string, code int) error { return tokenError(op, C.afsm_status(code)) }
