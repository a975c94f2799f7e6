package afsm

import (
	"context"
	"errors"
	"testing"
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
