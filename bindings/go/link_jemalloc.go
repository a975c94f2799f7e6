//go:build afsm_jemalloc

package afsm

// Opt-in: -tags afsm_jemalloc makes jemalloc the allocator of the whole
// process (the engine's malloc included), as DESIGN.md has it for our
// executables. --no-as-needed keeps the DT_NEEDED entry although no Go or
// C code here names a jemalloc symbol; it comes before libc's in the
// search order, so jemalloc's malloc wins. Works with -race (checked).

/*
#cgo LDFLAGS: -Wl,--no-as-needed -ljemalloc -Wl,--as-needed
*/
import "C"
