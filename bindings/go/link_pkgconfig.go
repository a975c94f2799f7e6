//go:build afsm_pkgconfig

package afsm

// Linking against an installed libafsm (make install), found through
// pkg-config: go build -tags afsm_pkgconfig. Set PKG_CONFIG_PATH when the
// prefix is not a system one, and LD_LIBRARY_PATH (or an rpath in
// CGO_LDFLAGS) when the library is not in the loader's path.

/*
#cgo pkg-config: afsm
*/
import "C"
