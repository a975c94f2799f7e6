package afsm

/*
#include "afsm.h"
*/
import "C"

import "unicode/utf8"

// Text from callers must be UTF-8, as in the Python binding (whose str
// cannot hold anything else) and in sessiond's protobuf strings: a user id
// or metadata value stored as raw bytes by Go would come back mangled or
// refused elsewhere. These checks run before anything crosses into C.

// invalidUTF8 returns the offset and value of the first byte of s that is
// not part of a valid UTF-8 sequence; ok is true when there is none.
func invalidUTF8(s string) (offset int, b byte, ok bool) {
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			return i, s[i], false
		}
		i += size
	}
	return 0, 0, true
}

// textError is the error for an argument named what that is not UTF-8.
func textError(op, what, s string) error {
	if utf8.ValidString(s) {
		return nil
	}
	i, b, _ := invalidUTF8(s)
	return argError(op, C.AFSM_EINVAL, "%s: not valid UTF-8 (byte 0x%02x at offset %d)", what, b, i)
}

// metadataTextError is textError for every key and value of md.
func metadataTextError(op string, md map[string]string) error {
	for k, v := range md {
		if i, b, ok := invalidUTF8(k); !ok {
			return argError(op, C.AFSM_EINVAL, "metadata key: not valid UTF-8 (byte 0x%02x at offset %d)", b, i)
		}
		if i, b, ok := invalidUTF8(v); !ok {
			return argError(op, C.AFSM_EINVAL, "metadata %q: value not valid UTF-8 (byte 0x%02x at offset %d)", k, b,
				i)
		}
	}
	return nil
}
