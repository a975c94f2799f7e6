package afsm

import (
	"runtime"
	"sync/atomic"
	"time"
)

// gate lets many calls run at once and lets Close wait for them to finish
// and keep new ones out, without one shared counter on the hot path: a
// shared atomic (or sync.RWMutex.RLock) bounces one cache line between all
// cores. Calls count themselves in one of several padded stripes, picked
// from a byte of the session id (random in a UUIDv7).
//
// Ordering: enter increments its stripe and then loads closed; shut stores
// closed and then loads every stripe. Go's atomics are sequentially
// consistent, so either the caller sees closed and backs out, or shut sees
// its increment and waits for it.
type gate struct {
	closed  atomic.Bool
	_       [cacheLine - 1]byte
	stripes []stripe
}

const cacheLine = 64

type stripe struct {
	n atomic.Int64
	_ [cacheLine - 8]byte
}

func newGate(stripes int) gate {
	return gate{stripes: make([]stripe, stripes)}
}

// enter returns the stripe to pass to leave, or nil once the gate is shut.
// hint picks the stripe; len(stripes) is a power of two.
//
// Between enter and leave the goroutine is locked to its OS thread:
// afsm_error_detail is per thread, and a goroutine may move to another
// thread between the failing C call and the call that fetches its detail.
// LockOSThread costs a few nanoseconds (two fields of the g and the m).
func (g *gate) enter(hint byte) *stripe {
	runtime.LockOSThread()
	s := &g.stripes[int(hint)&(len(g.stripes)-1)]
	s.n.Add(1)
	if g.closed.Load() {
		s.n.Add(-1)
		runtime.UnlockOSThread()
		return nil
	}
	return s
}

// leave ends what enter began; an error's detail must be fetched before.
func (s *stripe) leave() {
	s.n.Add(-1)
	runtime.UnlockOSThread()
}

// enterHot is enter without the thread lock (~6-9 ns a pair, measured), for
// the data-plane calls (heartbeat, stats add) whose failures carry no
// detail (not found, expired, closed): their errors use codeError.
func (g *gate) enterHot(hint byte) *stripe {
	s := &g.stripes[int(hint)&(len(g.stripes)-1)]
	s.n.Add(1)
	if g.closed.Load() {
		s.n.Add(-1)
		return nil
	}
	return s
}

// leaveHot ends what enterHot began.
func (s *stripe) leaveHot() { s.n.Add(-1) }

// shut keeps new calls out and waits for the running ones. Calls are short
// (a list of millions of sessions is the longest), so it polls, backing
// off from yielding to short sleeps.
func (g *gate) shut() {
	g.closed.Store(true)
	for spins := 0; ; spins++ {
		if g.inProgress() == 0 {
			return
		}
		if spins < 100 {
			runtime.Gosched()
		} else {
			time.Sleep(100 * time.Microsecond)
		}
	}
}

// inProgress counts the calls between enter and leave (and, for a moment,
// those backing out of a shut gate).
func (g *gate) inProgress() int64 {
	var n int64
	for i := range g.stripes {
		n += g.stripes[i].n.Load()
	}
	return n
}

func (g *gate) isShut() bool { return g.closed.Load() }
