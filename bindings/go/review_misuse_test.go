package afsm

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// A hostile user of the Go binding (review s9). Each test failed before
// the fix committed after it.

// Every method checks ctx before crossing into C (README: "A cancelled ctx
// returns ctx.Err() before anything crosses into C"), an empty batch
// included: the batch calls returned no error for an empty id list, even
// with a cancelled ctx (the check sat inside the per-chunk loop).
func TestEmptyBatchesCheckContext(t *testing.T) {
	m := newManager(t, &ManagerConfig{ManualReaper: true})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := m.GetMany(ctx, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("GetMany(cancelled, no ids) = %v, want context.Canceled", err)
	}
	if _, _, err := m.HeartbeatMany(ctx, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("HeartbeatMany(cancelled, no ids) = %v, want context.Canceled", err)
	}
	if _, err := m.AddStatsMany(ctx, nil, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("AddStatsMany(cancelled, no ids) = %v, want context.Canceled", err)
	}
}

// logFunc adapts a function to Logger.
type logFunc func(level LogLevel, msg string, fields []LogField)

func (f logFunc) Log(level LogLevel, msg string, fields []LogField) { f(level, msg, fields) }

// t.FailNow, t.Fatal and t.SkipNow end the goroutine with runtime.Goexit,
// which a recover does not stop: called in a hook, it unwound the engine's
// C frames under the callback. The engine call never returned (its
// goroutine just ended), the rest of the C function never ran, and the
// thread kept its "inside a callback" mark, so the Manager's Close on that
// thread then failed with ErrCloseInCallback. A hook that calls Goexit must
// end only the hook, be reported to the Logger like a panic, and leave the
// call and the Manager working.
func TestGoexitInAHookEndsOnlyTheHook(t *testing.T) {
	for _, where := range []string{"OnEvent", "Logger", "Clock"} {
		where := where
		t.Run(where, func(t *testing.T) {
			var armed atomic.Bool
			reports := make(chan string, 16)
			cfg := &ManagerConfig{ManualReaper: true}
			clk := newVClock()
			goexit := func(in string) {
				if in == where && armed.CompareAndSwap(true, false) {
					runtime.Goexit()
				}
			}
			cfg.OnEvent = func(Event) { goexit("OnEvent") }
			cfg.Clock = func() int64 { goexit("Clock"); return clk.now() }
			cfg.Logger = logFunc(func(level LogLevel, msg string, fields []LogField) {
				if strings.HasPrefix(msg, "afsm: ") {
					reports <- msg + " " + fields[0].Value
					return
				}
				goexit("Logger")
			})
			m, err := NewManager(cfg)
			if err != nil {
				t.Fatal(err)
			}
			armed.Store(true)
			type result struct {
				s   *Session
				err error
			}
			done := make(chan result, 1)
			go func() {
				// The same goroutine (and OS thread) then closes.
				var r result
				defer func() { done <- r }()
				r.s, _, r.err = m.CreateSession(context.Background(), "u", "10.0.0.1", 1, mustV7(t), nil)
				if r.err == nil {
					r.err = m.Close()
				}
			}()
			var r result
			select {
			case r = <-done:
			case <-time.After(20 * time.Second):
				t.Fatal("CreateSession + Close did not return")
			}
			if r.s == nil && r.err == nil {
				t.Fatalf("CreateSession never returned: runtime.Goexit in %s ended its goroutine inside C", where)
			}
			if r.err != nil {
				t.Fatalf("after runtime.Goexit in %s: %v", where, r.err)
			}
			select {
			case msg := <-reports:
				if !strings.Contains(msg, where) || !strings.Contains(msg, "runtime.Goexit") {
					t.Errorf("report %q does not name %s and runtime.Goexit", msg, where)
				}
			default:
				t.Errorf("runtime.Goexit in %s was not reported to the Logger", where)
			}
		})
	}
}
