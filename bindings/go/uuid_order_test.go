package afsm

import (
	"bytes"
	"runtime"
	"testing"
)

// NewV7's doc promises ids "strictly increasing across the process". Since
// issue 15 the C generator hands each OS thread its own block of 64 stamps
// (core/util/uuid.c), so only one thread's ids increase; and a goroutine is
// not a thread: the Go runtime may run its successive cgo calls on different
// threads. Here two goroutines, each locked to its own thread, draw in turns
// through channels, so every draw happens after the one before it, as two
// successive calls of one goroutine that migrated between them would.
func TestNewV7IncreasesAcrossThreads(t *testing.T) {
	worker := func(requests chan chan UUID) {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		for reply := range requests {
			u, err := NewV7()
			if err != nil {
				panic(err)
			}
			reply <- u
		}
	}
	a, b := make(chan chan UUID), make(chan chan UUID)
	defer close(a)
	defer close(b)
	go worker(a)
	go worker(b)
	draw := func(w chan chan UUID) UUID {
		reply := make(chan UUID)
		w <- reply
		return <-reply
	}
	for attempt := 0; attempt < 300; attempt++ {
		x := draw(a)
		y := draw(b)
		z := draw(a)
		if bytes.Compare(x[:], y[:]) >= 0 || bytes.Compare(y[:], z[:]) >= 0 {
			t.Fatalf("attempt %d: NewV7 not increasing across the process: %v, then %v, then %v", attempt, x, y, z)
		}
	}
}
