package afsm

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// goManager is the baseline: the old service's design in plain Go, one map
// per index behind one sync.RWMutex, holding the same records. Unlike the
// old service it returns copies (the old one handed out its own pointer,
// a data race), so both sides do the same work for a Get.
type goManager struct {
	mu      sync.RWMutex
	byID    map[UUID]*Session
	byConn  map[UUID]UUID
	byUser  map[string]map[UUID]struct{}
	timeout time.Duration
	seq     atomic.Uint64
}

func newGoManager() *goManager {
	return &goManager{byID: map[UUID]*Session{}, byConn: map[UUID]UUID{}, byUser: map[string]map[UUID]struct{}{},
		timeout: 30 * time.Minute}
}

func copySession(s *Session) *Session {
	c := *s
	c.Metadata = cloneMetadata(s.Metadata)
	return &c
}

func (g *goManager) create(user, ip string, port uint32, conn UUID, md map[string]string) (*Session, error) {
	now := time.Now()
	var id UUID // time-ordered like a v7: milliseconds, then a sequence
	binary.BigEndian.PutUint64(id[:8], uint64(now.UnixMilli())<<16|0x7000)
	binary.BigEndian.PutUint64(id[8:], g.seq.Add(1)|0x8000000000000000)
	s := &Session{SessionID: id, UserID: user, ConnectionID: conn, ClientIP: ip, ClientPort: port,
		ServerAddr: "10.0.0.1:9000", State: StateConnecting, CreatedAt: now, LastActiveAt: now,
		ExpiresAt: now.Add(g.timeout), Timeout: g.timeout, Metadata: cloneMetadata(md)}
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.byConn[conn]; ok {
		return nil, ErrAlreadyExists
	}
	g.byID[id] = s
	g.byConn[conn] = id
	u := g.byUser[user]
	if u == nil {
		u = map[UUID]struct{}{}
		g.byUser[user] = u
	}
	u[id] = struct{}{}
	return copySession(s), nil
}

func (g *goManager) get(id UUID) (*Session, error) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	s, ok := g.byID[id]
	if !ok {
		return nil, ErrSessionNotFound
	}
	if time.Now().After(s.ExpiresAt) {
		return nil, ErrSessionExpired
	}
	return copySession(s), nil
}

func (g *goManager) heartbeat(id UUID) (time.Duration, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	s, ok := g.byID[id]
	if !ok {
		return 0, ErrSessionNotFound
	}
	now := time.Now()
	s.LastActiveAt = now
	s.ExpiresAt = now.Add(s.Timeout)
	return s.Timeout, nil
}

func (g *goManager) deleteUser(user string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for id := range g.byUser[user] {
		delete(g.byConn, g.byID[id].ConnectionID)
		delete(g.byID, id)
	}
	delete(g.byUser, user)
}

// benchImpl is what the benchmarks drive, on either side.
type benchImpl struct {
	create    func(user string, conn UUID) (UUID, error)
	get       func(id UUID) error
	heartbeat func(id UUID) error
	remove    func(id UUID)
	close     func()
}

var benchMetadata = map[string]string{"device": "mobile", "version": "1.0.0"}

func newAfsmImpl(b *testing.B, n int) benchImpl {
	m, err := NewManager(&ManagerConfig{CapacityHint: n * 2, DefaultTimeout: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	return benchImpl{
		create: func(user string, conn UUID) (UUID, error) {
			s, _, err := m.CreateSession(ctx, user, "192.168.1.100", 54321, conn, benchMetadata)
			if err != nil {
				return Nil, err
			}
			return s.SessionID, nil
		},
		get:       func(id UUID) error { _, err := m.GetSession(ctx, id); return err },
		heartbeat: func(id UUID) error { _, err := m.Heartbeat(ctx, id); return err },
		remove:    func(id UUID) { _ = m.DeleteSession(ctx, id, "") },
		close:     func() { _ = m.Close() },
	}
}

func newGoImpl(b *testing.B, n int) benchImpl {
	g := newGoManager()
	g.timeout = time.Hour
	return benchImpl{
		create: func(user string, conn UUID) (UUID, error) {
			s, err := g.create(user, "192.168.1.100", 54321, conn, benchMetadata)
			if err != nil {
				return Nil, err
			}
			return s.SessionID, nil
		},
		get:       func(id UUID) error { _, err := g.get(id); return err },
		heartbeat: func(id UUID) error { _, err := g.heartbeat(id); return err },
		remove:    g.remove,
		close:     func() {},
	}
}

func (g *goManager) remove(id UUID) {
	g.mu.Lock()
	defer g.mu.Unlock()
	s, ok := g.byID[id]
	if !ok {
		return
	}
	delete(g.byConn, s.ConnectionID)
	delete(g.byID, id)
	u := g.byUser[s.UserID]
	delete(u, id)
	if len(u) == 0 {
		delete(g.byUser, s.UserID)
	}
}

// rng is a per-goroutine xorshift, so the benchmark's own bookkeeping
// shares no cache line between goroutines.
type rng uint64

var rngSeed atomic.Uint64

func newRNG() rng { return rng(rngSeed.Add(0x9E3779B97F4A7C15) | 1) }

func (r *rng) next() uint64 {
	x := uint64(*r)
	x ^= x << 13
	x ^= x >> 7
	x ^= x << 17
	*r = rng(x)
	return x
}

func (r *rng) uuid() UUID {
	var u UUID
	binary.LittleEndian.PutUint64(u[:8], r.next())
	binary.LittleEndian.PutUint64(u[8:], r.next())
	return u
}

// benchSizes: 100k and 1M sessions (about 100 s in all at -benchtime 1s);
// AFSM_BENCH_QUICK=1 skips 1M.
func benchSizes() []int {
	if os.Getenv("AFSM_BENCH_QUICK") != "" {
		return []int{100_000}
	}
	return []int{100_000, 1_000_000}
}

// BenchmarkCgoCall prices one empty cgo crossing (afsm_version).
func BenchmarkCgoCall(b *testing.B) {
	for i := 0; i < b.N; i++ {
		emptyCall()
	}
}

// BenchmarkSessions runs Get, Create and Heartbeat at each size on both
// sides, serially and with b.RunParallel (GOMAXPROCS goroutines). Each
// side is populated only while it runs, so neither pays for the other's
// heap in GC time. Sessions: 1000 users, two metadata keys, random access.
// Created sessions go to 100k users (the engine's per-user list is
// copied on every insert) and are deleted after each run, untimed.
func BenchmarkSessions(b *testing.B) {
	sides := []struct {
		name string
		open func(*testing.B, int) benchImpl
	}{{"afsm", newAfsmImpl}, {"go", newGoImpl}}
	for _, n := range benchSizes() {
		for _, side := range sides {
			impl := side.open(b, n)
			ids := make([]UUID, n)
			r := newRNG()
			for j := range ids {
				id, err := impl.create(fmt.Sprint("user", j%1000), r.uuid())
				if err != nil {
					b.Fatal(err)
				}
				ids[j] = id
			}
			runSide(b, fmt.Sprintf("n=%d/%s", n, side.name), impl, ids)
			impl.close()
			ids = nil
			impl = benchImpl{}
			runtime.GC()
		}
	}
}

func runSide(b *testing.B, prefix string, impl benchImpl, ids []UUID) {
	pick := func(r *rng) UUID { return ids[r.next()%uint64(len(ids))] }
	b.Run(prefix+"/Get-serial", func(b *testing.B) {
		r := newRNG()
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if err := impl.get(pick(&r)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run(prefix+"/Get-parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			r := newRNG()
			for pb.Next() {
				if err := impl.get(pick(&r)); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run(prefix+"/Heartbeat-serial", func(b *testing.B) {
		r := newRNG()
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if err := impl.heartbeat(pick(&r)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run(prefix+"/Heartbeat-parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			r := newRNG()
			for pb.Next() {
				if err := impl.heartbeat(pick(&r)); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run(prefix+"/Create-serial", func(b *testing.B) {
		r := newRNG()
		made := make([]UUID, 0, b.N)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			id, err := impl.create(fmt.Sprint("c", r.next()%100000), r.uuid())
			if err != nil {
				b.Fatal(err)
			}
			made = append(made, id)
		}
		b.StopTimer()
		for _, id := range made {
			impl.remove(id)
		}
	})
	b.Run(prefix+"/Create-parallel", func(b *testing.B) {
		var mu sync.Mutex
		var made []UUID
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			r := newRNG()
			var mine []UUID
			for pb.Next() {
				id, err := impl.create(fmt.Sprint("c", r.next()%100000), r.uuid())
				if err != nil {
					b.Error(err)
					return
				}
				mine = append(mine, id)
			}
			mu.Lock()
			made = append(made, mine...)
			mu.Unlock()
		})
		b.StopTimer()
		for _, id := range made {
			impl.remove(id)
		}
	})
}

// BenchmarkDataPlane: what closes the gap for per-packet work: no lookup
// (a pinned Handle) and one crossing for many ids (HeartbeatMany; ns/op is
// per id).
func BenchmarkDataPlane(b *testing.B) {
	const n = 100_000
	m, err := NewManager(&ManagerConfig{CapacityHint: n * 2, DefaultTimeout: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	ids := make([]UUID, n)
	r := newRNG()
	for i := range ids {
		s, _, err := m.CreateSession(context.Background(), fmt.Sprint("user", i%1000), "192.168.1.100", 54321,
			r.uuid(), benchMetadata)
		if err != nil {
			b.Fatal(err)
		}
		ids[i] = s.SessionID
	}
	hs := make([]*Handle, 1024)
	for i := range hs {
		if hs[i], err = m.Pin(context.Background(), ids[i*n/len(hs)]); err != nil {
			b.Fatal(err)
		}
	}
	defer func() {
		for _, h := range hs {
			h.Release()
		}
	}()
	b.Run("Handle.Touch-serial", func(b *testing.B) {
		r := newRNG()
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if _, err := hs[r.next()%uint64(len(hs))].Touch(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Handle.Touch-parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			r := newRNG()
			for pb.Next() {
				if _, err := hs[r.next()%uint64(len(hs))].Touch(); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("Handle.AddStats-parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			r := newRNG()
			for pb.Next() {
				if err := hs[r.next()%uint64(len(hs))].AddStats(Stats{PacketsSent: 1, BytesSent: 1200}); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("HeartbeatMany256-per-id", func(b *testing.B) {
		batch := make([]UUID, 256)
		r := newRNG()
		for i := 0; i < b.N; i += len(batch) {
			for j := range batch {
				batch[j] = ids[r.next()%uint64(len(ids))]
			}
			if _, _, err := m.HeartbeatMany(context.Background(), batch); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkValidateToken: one token check (decode, XChaCha20-Poly1305
// open, session lookup, copy with metadata) per op, 100k sessions.
func BenchmarkValidateToken(b *testing.B) {
	const n = 100_000
	m, err := NewManager(&ManagerConfig{CapacityHint: n * 2, DefaultTimeout: time.Hour,
		Key: bytes.Repeat([]byte{7}, KeySize), KeyID: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	toks := make([]string, n)
	r := newRNG()
	for i := range toks {
		_, tok, err := m.CreateSessionWithOptions(context.Background(), &CreateOptions{UserID: fmt.Sprint("user", i%1000),
			ClientIP: "192.168.1.100", ClientPort: 54321, ConnectionID: r.uuid(), Metadata: benchMetadata,
			BindToken: i%2 == 0})
		if err != nil {
			b.Fatal(err)
		}
		toks[i] = tok
	}
	b.Run("serial", func(b *testing.B) {
		r := newRNG()
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if _, err := m.ValidateToken(context.Background(), toks[r.next()%n], "192.168.1.100"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			r := newRNG()
			for pb.Next() {
				if _, err := m.ValidateToken(context.Background(), toks[r.next()%n], "192.168.1.100"); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("forged-serial", func(b *testing.B) { // the cost of a rejection (no session lookup)
		bad := []byte(toks[0])
		if bad[len(bad)/2] == 'A' {
			bad[len(bad)/2] = 'B'
		} else {
			bad[len(bad)/2] = 'A'
		}
		forged := string(bad)
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if _, err := m.ValidateToken(context.Background(), forged, ""); err == nil {
				b.Fatal("accepted")
			}
		}
	})
}
