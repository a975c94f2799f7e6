//go:build !afsm_pkgconfig

package afsm

// Default linking: against the build tree of this repository
// (cmake -S . -B build && make -C build afsm, from the repository root).
// The rpath lets test binaries find libafsm.so without LD_LIBRARY_PATH.
// Build with -tags afsm_pkgconfig to use an installed libafsm instead.

/*
#cgo CFLAGS: -I${SRCDIR}/../../include
#cgo LDFLAGS: -L${SRCDIR}/../../build/lib -lafsm -Wl,-rpath,${SRCDIR}/../../build/lib
*/
import "C"
