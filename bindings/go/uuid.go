package afsm

/*
#include "afsm.h"
*/
import "C"

import (
	"encoding/hex"
	"unsafe"
)

// UUID is a 16-byte RFC 9562 UUID in network order, laid out like the C
// afsm_uuid so slices of it cross into C without copying. The zero value is
// the nil UUID.
type UUID [16]byte

// Nil is the all-zero UUID.
var Nil UUID

// NewV7 returns a new UUIDv7 from the engine's generator: millisecond wall
// time in the top 48 bits, strictly increasing across the process.
func NewV7() (UUID, error) {
	var u UUID
	status := C.afsm_uuid_v7((*C.afsm_uuid)(unsafe.Pointer(&u)))
	if status != C.AFSM_OK {
		return u, codeError("NewV7", status)
	}
	return u, nil
}

// Parse parses the canonical 36-character form (hex digits in either case).
// Errors match ErrInvalidUUID and ErrInvalidArgument.
func Parse(s string) (UUID, error) {
	var u UUID
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return u, argError("Parse", C.AFSM_EUUID, "%q: must be 36 characters, 8-4-4-4-12 hex digits", s)
	}
	j := 0
	for i := 0; i < 36; {
		if i == 8 || i == 13 || i == 18 || i == 23 {
			i++
			continue
		}
		hi, ok1 := unhex(s[i])
		lo, ok2 := unhex(s[i+1])
		if !ok1 || !ok2 {
			return Nil, argError("Parse", C.AFSM_EUUID, "%q: must be 36 characters, 8-4-4-4-12 hex digits", s)
		}
		u[j] = hi<<4 | lo
		j++
		i += 2
	}
	return u, nil
}

// MustParse is Parse that panics on error; for constants in tests and
// initialisers.
func MustParse(s string) UUID {
	u, err := Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// String returns the lowercase canonical form,
// e.g. "019a5eba-1c84-7652-9ee0-f146556b141f".
func (u UUID) String() string {
	var b [36]byte
	hex.Encode(b[0:8], u[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], u[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], u[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], u[8:10])
	b[23] = '-'
	hex.Encode(b[24:], u[10:])
	return string(b[:])
}

// IsNil reports whether u is the all-zero UUID.
func (u UUID) IsNil() bool { return u == Nil }

// MarshalText implements encoding.TextMarshaler (the canonical form).
func (u UUID) MarshalText() ([]byte, error) { return []byte(u.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler (see Parse).
func (u *UUID) UnmarshalText(b []byte) error {
	v, err := Parse(string(b))
	if err != nil {
		return err
	}
	*u = v
	return nil
}

func (u *UUID) c() *C.afsm_uuid { return (*C.afsm_uuid)(unsafe.Pointer(u)) }
