package afsm

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The table both bindings are held to: ../../tests/bindings_cases.json
// (read by tests/python/test_cases.py too). See its "about".

type caseFile struct {
	Cases []bindingCase `json:"cases"`
}

type keyFileSpec struct {
	Missing bool   `json:"missing"`
	Mode    string `json:"mode"`
	Size    int    `json:"size"`
}

type bindingCase struct {
	Name   string `json:"name"`
	Config struct {
		ShardCount       int          `json:"shard_count"`
		CapacityHint     int          `json:"capacity_hint"`
		DefaultTimeoutMs int64        `json:"default_timeout_ms"`
		KeyHex           *string      `json:"key_hex"`
		ServerAddrHex    string       `json:"server_addr_hex"`
		KeyFile          *keyFileSpec `json:"key_file"`
		ExpireOnCreated  bool         `json:"expire_on_created"`
		// ExpireAfterSetup: a virtual clock jumps an hour ahead after the
		// setup, past every setup session's deadline.
		ExpireAfterSetup bool `json:"expire_after_setup"`
		// StoppedClock: a virtual clock that never moves, so a session
		// with a 1 ms timeout cannot expire between the binding's calls.
		StoppedClock bool `json:"stopped_clock"`
	} `json:"config"`
	Setup []struct {
		UserID   string            `json:"user_id"`
		Count    int               `json:"count"`
		Metadata map[string]string `json:"metadata"`
	} `json:"setup"`
	Op   string `json:"op"`
	Args struct {
		UserID       *string           `json:"user_id"`
		UserIDHex    string            `json:"user_id_hex"`
		UserIDRepeat []interface{}     `json:"user_id_repeat"`
		Port         uint32            `json:"port"`
		TimeoutMs    int64             `json:"timeout_ms"`
		TimeoutUs    int64             `json:"timeout_us"`
		Metadata     map[string]string `json:"metadata"`
		MetadataHex  [][2]string       `json:"metadata_hex"`
		MetadataKeys int               `json:"metadata_keys"`
		// MetadataRepeat is one entry: [[key text, times], [value text, times]].
		MetadataRepeat [][2]interface{} `json:"metadata_repeat"`
		IP             *string          `json:"ip"`
		IPHex          string           `json:"ip_hex"`
		ReasonHex      string           `json:"reason_hex"`
		ReasonRepeat   []interface{}    `json:"reason_repeat"`
		// SessionTimeoutMs is the restored copy's timeout (restore).
		SessionTimeoutMs *int64       `json:"session_timeout_ms"`
		BindIP           bool         `json:"bind_ip"`
		ClientIP         string       `json:"client_ip"`
		Limit            int          `json:"limit"`
		State            int          `json:"state"`
		KeyID            uint32       `json:"key_id"`
		KeyHex           string       `json:"key_hex"`
		Twice            bool         `json:"twice"`
		File             *keyFileSpec `json:"file"`
		Deltas           int          `json:"deltas"`
		IDs              int          `json:"ids"`
		CloseFirst       bool         `json:"close_first"`
		// DeleteBeforeMetadata: list deletes this many of the sessions it
		// listed before it reads their metadata; get, get_many,
		// validate_token and update_state delete the session of each of
		// their first n metadata reads just before it.
		DeleteBeforeMetadata int   `json:"delete_before_metadata"`
		NowNs                int64 `json:"now_ns"`
		ByConnection         bool  `json:"by_connection"`
		// Missing: get_many asks for this many ids that never existed too.
		Missing int `json:"missing"`
	} `json:"args"`
	Expect struct {
		OK        bool    `json:"ok"`
		Error     string  `json:"error"`
		Detail    *string `json:"detail"`
		TimeoutMs int64   `json:"timeout_ms"`
		Count     *int    `json:"count"`
		Total     *int    `json:"total"`
		// CreatedLeft: sessions a CREATED event named that GetSession still
		// finds (ok or expired) after the op.
		CreatedLeft   *int    `json:"created_left"`
		DeletedReason *string `json:"deleted_reason"`
		// Items: get_many's per-id outcome, "ok" or an error name.
		Items []string `json:"items"`
		// Metadata: the metadata of the session the op returned.
		Metadata map[string]string `json:"metadata"`
	} `json:"expect"`
}

var caseErrors = map[string]error{
	"invalid_argument": ErrInvalidArgument,
	"too_long":         ErrTooLong,
	"invalid_ip":       ErrInvalidIP,
	"ip_mismatch":      ErrIPMismatch,
	"key_exists":       ErrKeyExists,
	"key_in_use":       ErrKeyInUse,
	"key_file":         ErrKeyFile,
	"closed":           ErrClosed,
	"expired":          ErrSessionExpired,
	"not_found":        ErrSessionNotFound,
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// makeKeyFile writes (or, for missing, only names) a key file in dir.
func makeKeyFile(t *testing.T, dir string, spec *keyFileSpec) string {
	t.Helper()
	path := filepath.Join(dir, "k")
	if spec.Missing {
		return path
	}
	if err := os.WriteFile(path, make([]byte, spec.Size), 0o600); err != nil {
		t.Fatal(err)
	}
	var mode uint32
	for _, c := range spec.Mode {
		mode = mode*8 + uint32(c-'0')
	}
	if err := os.Chmod(path, os.FileMode(mode)); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestSharedBindingCases(t *testing.T) {
	raw, err := os.ReadFile("../../tests/bindings_cases.json")
	if err != nil {
		t.Fatal(err)
	}
	var file caseFile
	if err := json.Unmarshal(raw, &file); err != nil {
		t.Fatal(err)
	}
	if len(file.Cases) < 20 {
		t.Fatalf("only %d cases read", len(file.Cases))
	}
	for _, c := range file.Cases {
		c := c
		t.Run(c.Name, func(t *testing.T) { runCase(t, &c) })
	}
}

func runCase(t *testing.T, c *bindingCase) {
	ctx := context.Background()
	dir := t.TempDir()
	path := ""
	cfg := &ManagerConfig{ManualReaper: true, ShardCount: c.Config.ShardCount, CapacityHint: c.Config.CapacityHint,
		DefaultTimeout: time.Duration(c.Config.DefaultTimeoutMs) * time.Millisecond}
	if c.Config.KeyHex != nil {
		cfg.Key = mustHex(t, *c.Config.KeyHex)
	}
	if c.Config.ServerAddrHex != "" {
		cfg.ServerAddr = string(mustHex(t, c.Config.ServerAddrHex))
	}
	if c.Config.KeyFile != nil {
		path = makeKeyFile(t, dir, c.Config.KeyFile)
		cfg.KeyFile = path
	}
	// Every event, for the expect fields that look at them.
	var evMu sync.Mutex
	var events []Event
	var now atomic.Int64
	now.Store(1e12)
	if c.Config.ExpireAfterSetup || c.Config.StoppedClock {
		cfg.Clock = now.Load
	}
	if c.Config.ExpireOnCreated {
		cfg.Clock = now.Load
		cfg.OnEvent = func(e Event) {
			evMu.Lock()
			events = append(events, e)
			evMu.Unlock()
			if e.Type == EventCreated {
				now.Add(int64(time.Hour))
			}
		}
	}
	m, err := NewManager(cfg)
	if c.Op == "open" {
		checkOutcome(t, c, err, path)
		if m != nil {
			m.Close()
		}
		return
	}
	if err != nil {
		t.Fatalf("NewManager: %v", err)
	}
	defer m.Close()
	for _, s := range c.Setup {
		for i := 0; i < s.Count; i++ {
			if _, _, err := m.CreateSession(ctx, s.UserID, "10.0.0.1", 1, mustV7(t), s.Metadata); err != nil {
				t.Fatal(err)
			}
		}
	}
	a := &c.Args
	userID := ""
	switch {
	case a.UserID != nil:
		userID = *a.UserID
	case a.UserIDHex != "":
		userID = string(mustHex(t, a.UserIDHex))
	case a.UserIDRepeat != nil:
		userID = strings.Repeat(a.UserIDRepeat[0].(string), int(a.UserIDRepeat[1].(float64)))
	}
	// Every session of the setup (none once closed).
	var ids, conns []UUID
	if all, _, err := m.ListSessions(ctx, nil); err == nil {
		for _, s := range all {
			ids = append(ids, s.SessionID)
			conns = append(conns, s.ConnectionID)
		}
	}
	if c.Config.ExpireAfterSetup {
		now.Add(int64(time.Hour))
	}
	if a.CloseFirst {
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
		ids = nil
	}
	if n := a.DeleteBeforeMetadata; n > 0 && c.Op != "list" {
		m.deleteBeforeMetadata(n)
		defer func() {
			// An expired get returns no copy, so Go reads no metadata
			// there: no window, nothing deleted.
			if left := m.deleteBeforeMetadata(0); left > 0 && c.Expect.Error != "expired" {
				t.Errorf("%d fewer metadata reads than sessions to delete", left)
			}
		}()
	}
	var sess *Session
	switch c.Op {
	case "create":
		md := a.Metadata
		for _, kv := range a.MetadataHex {
			if md == nil {
				md = map[string]string{}
			}
			md[string(mustHex(t, kv[0]))] = string(mustHex(t, kv[1]))
		}
		if md == nil && (a.MetadataKeys > 0 || a.MetadataRepeat != nil) {
			md = map[string]string{}
		}
		for i := 0; i < a.MetadataKeys; i++ {
			md[fmt.Sprintf("k%d", i)] = "v"
		}
		if r := a.MetadataRepeat; r != nil {
			md[strings.Repeat(r[0][0].(string), int(r[0][1].(float64)))] =
				strings.Repeat(r[1][0].(string), int(r[1][1].(float64)))
		}
		ip := "10.0.0.1"
		if a.IP != nil {
			ip = *a.IP
		}
		if a.IPHex != "" {
			ip = string(mustHex(t, a.IPHex))
		}
		timeout := time.Duration(a.TimeoutMs)*time.Millisecond + time.Duration(a.TimeoutUs)*time.Microsecond
		sess, _, err = m.CreateSessionWithOptions(ctx, &CreateOptions{UserID: userID, ClientIP: ip,
			ClientPort: a.Port, ConnectionID: mustV7(t), Metadata: md, Timeout: timeout})
		if err == nil && c.Expect.TimeoutMs != 0 && sess.Timeout != time.Duration(c.Expect.TimeoutMs)*time.Millisecond {
			t.Fatalf("timeout %v, want %d ms", sess.Timeout, c.Expect.TimeoutMs)
		}
	case "validate_token":
		var token string
		sess, token, err = m.CreateSessionWithOptions(ctx, &CreateOptions{UserID: "u", ClientIP: "10.0.0.1",
			ClientPort: 1, ConnectionID: mustV7(t), BindToken: a.BindIP, Metadata: a.Metadata})
		if err != nil {
			t.Fatal(err)
		}
		sess, err = m.ValidateToken(ctx, token, a.ClientIP)
	case "list":
		if n := a.DeleteBeforeMetadata; n > 0 {
			m.listedHook = func(listed []UUID) {
				for _, id := range listed[:n] {
					if err := m.DeleteSession(ctx, id, ""); err != nil {
						t.Errorf("delete %v: %v", id, err)
					}
				}
				n = 0 // the first page only
			}
		}
		var p *Page
		p, err = m.ListSessionsPage(ctx, &SessionFilter{UserID: userID, Limit: a.Limit})
		if err == nil {
			if c.Expect.Count != nil && len(p.Sessions) != *c.Expect.Count {
				t.Fatalf("%d sessions, want %d", len(p.Sessions), *c.Expect.Count)
			}
			if c.Expect.Total != nil && p.Total != *c.Expect.Total {
				t.Fatalf("total %d, want %d", p.Total, *c.Expect.Total)
			}
		}
	case "update_state":
		sess, _, err = m.CreateSession(ctx, "u", "10.0.0.1", 1, mustV7(t), a.Metadata)
		if err != nil {
			t.Fatal(err)
		}
		st := State(a.State)
		sess, err = m.UpdateSession(ctx, sess.SessionID, &st, nil, nil)
	case "add_key":
		key := mustHex(t, a.KeyHex)
		err = m.AddKey(a.KeyID, key)
		if err == nil && a.Twice {
			err = m.AddKey(a.KeyID, key)
		}
	case "add_key_file":
		path = makeKeyFile(t, dir, a.File)
		err = m.AddKeyFile(a.KeyID, path)
	case "remove_key":
		err = m.RemoveKey(a.KeyID)
	case "delete":
		reason := string(mustHex(t, a.ReasonHex))
		if r := a.ReasonRepeat; r != nil {
			reason = strings.Repeat(r[0].(string), int(r[1].(float64)))
		}
		sess, _, err = m.CreateSession(ctx, "u", "10.0.0.1", 1, mustV7(t), nil)
		if err != nil {
			t.Fatal(err)
		}
		err = m.DeleteSession(ctx, sess.SessionID, reason)
	case "restore": // a copy of a live session, changed as args say, restored in its place
		sess, _, err = m.CreateSession(ctx, "u", "10.0.0.1", 1, mustV7(t), nil)
		if err != nil {
			t.Fatal(err)
		}
		if err = m.DeleteSession(ctx, sess.SessionID, ""); err != nil {
			t.Fatal(err)
		}
		cp := *sess
		if a.UserIDRepeat != nil {
			cp.UserID = userID
		}
		if a.SessionTimeoutMs != nil {
			cp.Timeout = time.Duration(*a.SessionTimeoutMs) * time.Millisecond
		}
		if a.Port != 0 {
			cp.ClientPort = a.Port
		}
		if a.IP != nil {
			cp.ClientIP = *a.IP
		}
		err = m.Restore(ctx, &cp)
	case "close_pinned":
		sess, _, err = m.CreateSession(ctx, "u", "10.0.0.1", 1, mustV7(t), nil)
		if err != nil {
			t.Fatal(err)
		}
		var h *Handle
		if h, err = m.Pin(ctx, sess.SessionID); err != nil {
			t.Fatal(err)
		}
		if err = m.Close(); err == nil {
			if _, terr := h.Touch(); !errors.Is(terr, ErrClosed) {
				t.Fatalf("Touch after Close: %v, want ErrClosed", terr)
			}
			h.Release() // a no-op now
		}
	case "handle_after_release":
		sess, _, err = m.CreateSession(ctx, "u", "10.0.0.1", 1, mustV7(t), nil)
		if err != nil {
			t.Fatal(err)
		}
		var h *Handle
		if h, err = m.Pin(ctx, sess.SessionID); err != nil {
			t.Fatal(err)
		}
		h.Release()
		_, err = h.Touch()
	case "advance":
		_, err = m.Advance(a.NowNs)
	case "set_default_timeout":
		err = m.SetDefaultTimeout(time.Duration(a.TimeoutMs) * time.Millisecond)
	case "add_stats_many": // with fewer (or more) deltas than ids
		_, err = m.AddStatsMany(ctx, ids, make([]Stats, a.Deltas))
	case "get":
		if a.ByConnection {
			sess, err = m.GetSessionByConnection(ctx, conns[0])
		} else {
			sess, err = m.GetSession(ctx, ids[0])
		}
	case "get_many":
		asked := ids[:a.IDs]
		for i := 0; i < a.Missing; i++ {
			asked = append(asked, mustV7(t))
		}
		var got []*Session
		var errs []error
		got, errs, err = m.GetMany(ctx, asked)
		if err == nil && c.Expect.Items != nil {
			checkItems(t, c.Expect.Items, got, errs)
		}
	case "heartbeat_many":
		_, _, err = m.HeartbeatMany(ctx, ids[:a.IDs])
	default:
		t.Fatalf("unknown op %q", c.Op)
	}
	checkOutcome(t, c, err, path)
	if c.Expect.Metadata != nil && (sess == nil || !reflect.DeepEqual(sess.Metadata, c.Expect.Metadata)) {
		t.Fatalf("session %+v, want metadata %v", sess, c.Expect.Metadata)
	}
	evMu.Lock()
	defer evMu.Unlock()
	if want := c.Expect.CreatedLeft; want != nil {
		left := 0
		for _, e := range events {
			if e.Type != EventCreated {
				continue
			}
			if _, gerr := m.GetSession(ctx, e.SessionID); !errors.Is(gerr, ErrSessionNotFound) {
				left++
			}
		}
		if left != *want {
			t.Fatalf("%d created sessions left, want %d (events %+v)", left, *want, events)
		}
	}
	if want := c.Expect.DeletedReason; want != nil {
		deleted := map[UUID]string{}
		for _, e := range events {
			if e.Type == EventDeleted {
				deleted[e.SessionID] = e.Reason
			}
		}
		for _, e := range events {
			if r, ok := deleted[e.SessionID]; e.Type == EventCreated && (!ok || r != *want) {
				t.Fatalf("session %v: deleted %v with reason %q, want %q", e.SessionID, ok, r, *want)
			}
		}
	}
}

// checkItems checks a batch's per-id outcomes against want ("ok" or an
// error name); the items that fail with the same error name must carry the
// same message, whatever made them fail.
func checkItems(t *testing.T, want []string, got []*Session, errs []error) {
	t.Helper()
	if len(errs) != len(want) {
		t.Fatalf("%d items, want %d", len(errs), len(want))
	}
	msgs := map[string]string{}
	for i, w := range want {
		if w == "ok" {
			if errs[i] != nil || got[i] == nil {
				t.Fatalf("item %d: %v, want a session", i, errs[i])
			}
			continue
		}
		if got[i] != nil || !errors.Is(errs[i], caseErrors[w]) {
			t.Fatalf("item %d: session %v, error %v, want %s", i, got[i], errs[i], w)
		}
		if m, seen := msgs[w]; seen && m != errs[i].Error() {
			t.Fatalf("item %d: %q, but an earlier %s item said %q", i, errs[i].Error(), w, m)
		}
		msgs[w] = errs[i].Error()
	}
}

func checkOutcome(t *testing.T, c *bindingCase, err error, path string) {
	t.Helper()
	if c.Expect.OK {
		if err != nil {
			t.Fatalf("want success, got %v", err)
		}
		return
	}
	want, known := caseErrors[c.Expect.Error]
	if !known {
		t.Fatalf("unknown error name %q", c.Expect.Error)
	}
	if !errors.Is(err, want) {
		t.Fatalf("got %v, want %v", err, want)
	}
	if c.Expect.Detail != nil {
		var e *Error
		if !errors.As(err, &e) {
			t.Fatalf("%v is not an *Error", err)
		}
		detail := strings.ReplaceAll(*c.Expect.Detail, "{path}", path)
		if e.Detail != detail {
			t.Fatalf("detail %q, want %q", e.Detail, detail)
		}
		if !strings.Contains(err.Error(), detail) {
			t.Fatalf("message %q lacks the detail", err.Error())
		}
	}
}
