package afsm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// freePort asks the kernel for an unused loopback port.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startEtcd runs Debian's etcd on loopback (free ports, data in a temp
// dir) until the test ends, and returns its client URL.
func startEtcd(t *testing.T) string {
	t.Helper()
	client, peer := freePort(t), freePort(t)
	url := fmt.Sprintf("http://127.0.0.1:%d", client)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", peer)
	cmd := exec.Command("/usr/bin/etcd", "--data-dir", t.TempDir(), "--listen-client-urls", url,
		"--advertise-client-urls", url, "--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "default="+peerURL)
	if err := cmd.Start(); err != nil {
		t.Fatalf("etcd: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	waitFor(t, "etcd healthy", 20*time.Second, func() bool {
		resp, err := http.Get(url + "/health")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(body), `"true"`)
	})
	return url
}

func TestEtcdStoreSharedByTwoManagers(t *testing.T) {
	url := startEtcd(t)
	var log eventLog
	a := newManager(t, &ManagerConfig{Store: StoreEtcd, Etcd: EtcdConfig{Endpoints: []string{url}, Prefix: "/go1/"},
		OnEvent: log.on})
	b := newManager(t, &ManagerConfig{Store: StoreEtcd, Etcd: EtcdConfig{Endpoints: []string{url}, Prefix: "/go1/"}})
	ctx := context.Background()
	conn, _ := NewV7()
	s, _, err := b.CreateSession(ctx, "alice", "10.0.0.1", 443, conn, map[string]string{"device": "phone"})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "A sees B's session", 5*time.Second, func() bool {
		_, err := a.GetSession(ctx, s.SessionID)
		return err == nil
	})
	got, err := a.GetSession(ctx, s.SessionID)
	if err != nil || got.UserID != "alice" || got.Metadata["device"] != "phone" {
		t.Fatalf("A's copy: %+v, %v", got, err)
	}
	if err := a.DeleteSession(ctx, s.SessionID, "logout"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "B sees the delete", 5*time.Second, func() bool {
		_, err := b.GetSession(ctx, s.SessionID)
		return errors.Is(err, ErrSessionNotFound)
	})
	events := log.take()
	if len(events) != 2 || events[0].Type != EventCreated || events[1].Type != EventDeleted ||
		events[1].Reason != "logout" {
		t.Fatalf("A's events: %+v", events)
	}
}

func TestEtcdStoreUnavailable(t *testing.T) {
	url := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	start := time.Now()
	_, err := NewManager(&ManagerConfig{Store: StoreEtcd,
		Etcd: EtcdConfig{Endpoints: []string{url}, RequestTimeout: 300 * time.Millisecond}})
	if !errors.Is(err, ErrUnavailable) || time.Since(start) > 2*time.Second {
		t.Fatalf("got %v after %v, want ErrUnavailable within the timeout", err, time.Since(start))
	}
}
