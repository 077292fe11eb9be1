package pgstore

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/server/store"
)

// The leader lease: exclusive while it runs, renewed by its holder with
// the same term, taken over after expiry or release with a higher term.
func TestClusterLease(t *testing.T) {
	s, _ := open(t, Options{})
	ctx := context.Background()
	type step struct {
		holder   string
		ttl      time.Duration
		sleep    time.Duration // before the step
		release  string        // release for this holder instead of leasing
		wantOK   bool
		wantTerm uint64
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"exclusive, renewed with the same term", []step{
			{holder: "a", ttl: time.Minute, wantOK: true, wantTerm: 1},
			{holder: "b", ttl: time.Minute, wantOK: false},
			{holder: "a", ttl: time.Minute, wantOK: true, wantTerm: 1},
		}},
		{"taken over after expiry with a higher term", []step{
			{holder: "a", ttl: 150 * time.Millisecond, wantOK: true, wantTerm: 1},
			{holder: "b", ttl: time.Minute, sleep: 250 * time.Millisecond, wantOK: true, wantTerm: 2},
			{holder: "a", ttl: time.Minute, wantOK: false},
		}},
		{"released: taken at once", []step{
			{holder: "a", ttl: time.Minute, wantOK: true, wantTerm: 1},
			{release: "b"}, // not b's: kept
			{holder: "b", ttl: time.Minute, wantOK: false},
			{release: "a"},
			{holder: "b", ttl: time.Minute, sleep: 5 * time.Millisecond, wantOK: true, wantTerm: 2},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := "lease-" + tc.name
			for i, st := range tc.steps {
				time.Sleep(st.sleep)
				if st.release != "" {
					if err := s.ReleaseLease(ctx, name, st.release); err != nil {
						t.Fatalf("step %d: release: %v", i, err)
					}
					continue
				}
				term, ok, err := s.Lease(ctx, name, st.holder, st.ttl)
				if err != nil || ok != st.wantOK || (ok && term != st.wantTerm) {
					t.Fatalf("step %d: Lease(%s) = %d, %v, %v; want %d, %v", i, st.holder, term, ok, err, st.wantTerm, st.wantOK)
				}
			}
		})
	}
}

// Many nodes racing for one free lease: exactly one gets it.
func TestClusterLeaseRace(t *testing.T) {
	s, _ := open(t, Options{})
	var wg sync.WaitGroup
	won := make(chan string, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("n%d", i)
			if _, ok, err := s.Lease(context.Background(), "leader", id, time.Minute); err != nil {
				t.Error(err)
			} else if ok {
				won <- id
			}
		}()
	}
	wg.Wait()
	close(won)
	var winners []string
	for w := range won {
		winners = append(winners, w)
	}
	if len(winners) != 1 {
		t.Fatalf("lease holders: %v, want exactly one", winners)
	}
}

// Mail reaches only its addressee, oldest first, once; concurrent
// receivers of one node share it without duplicates.
func TestClusterMail(t *testing.T) {
	s, _ := open(t, Options{})
	ctx := context.Background()
	var sent []store.Mail
	for i := range 300 {
		to := []string{"n1", "n2"}[i%2]
		sent = append(sent, store.Mail{To: to, From: "n3", Kind: store.MailDownlink, Device: fmt.Sprintf("d%d", i),
			Topic: "kf/d/x/down", Payloads: [][]byte{{byte(i)}, {1, 2, 3}}})
	}
	sent = append(sent, store.Mail{To: "n2", From: "n1", Kind: store.MailDisconnect, Device: "d-last"})
	for i := 0; i < len(sent); i += 50 {
		if err := s.Send(ctx, sent[i:min(i+50, len(sent))]...); err != nil {
			t.Fatal(err)
		}
	}
	// n1: one receiver, in pages of 40: in order, all of them.
	var got1 []store.Mail
	for {
		page, err := s.Receive(ctx, "n1", 40)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		got1 = append(got1, page...)
	}
	if len(got1) != 150 {
		t.Fatalf("n1 received %d mail, want 150", len(got1))
	}
	for i, m := range got1 {
		want := sent[2*i]
		if m.To != "n1" || m.Device != want.Device || m.From != "n3" || m.Kind != store.MailDownlink || m.Topic != want.Topic ||
			len(m.Payloads) != 2 || m.Payloads[0][0] != want.Payloads[0][0] || m.At.IsZero() {
			t.Fatalf("n1 mail %d = %+v, want %+v", i, m, want)
		}
		if i > 0 && m.ID <= got1[i-1].ID {
			t.Fatalf("n1 mail out of order at %d", i)
		}
	}
	// n2: four concurrent receivers.
	var mu sync.Mutex
	seen := map[string]int{}
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				page, err := s.Receive(ctx, "n2", 7)
				if err != nil {
					t.Error(err)
					return
				}
				if len(page) == 0 {
					return
				}
				mu.Lock()
				for _, m := range page {
					seen[m.Device]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(seen) != 151 {
		t.Fatalf("n2 received %d distinct mail, want 151", len(seen))
	}
	for d, n := range seen {
		if n != 1 {
			t.Fatalf("mail for %s received %d times", d, n)
		}
	}
	if m, err := s.Receive(ctx, "n2", 10); err != nil || len(m) != 0 {
		t.Fatalf("after all was taken: %v, %v", m, err)
	}
}

// Sessions hides dead nodes; a newer session wins, and a late down of an
// older session keeps the newer one.
func TestClusterSessions(t *testing.T) {
	s, _ := open(t, Options{})
	ctx := context.Background()
	t0 := time.Date(2026, 11, 30, 12, 0, 0, 123456789, time.UTC)
	beat := func(id string, ttl time.Duration) {
		t.Helper()
		if _, err := s.Heartbeat(ctx, store.Node{ID: id, MQTT: id + ":8883"}, ttl); err != nil {
			t.Fatal(err)
		}
	}
	beat("n1", time.Minute)
	beat("n2", time.Minute)
	beat("dead", 100*time.Millisecond)
	put := func(node string, up, down []store.Session) {
		t.Helper()
		if err := s.PutSessions(ctx, node, up, down); err != nil {
			t.Fatal(err)
		}
	}
	put("n1", []store.Session{{Device: "a", Since: t0}, {Device: "b", Since: t0}, {Device: "c", Since: t0}}, nil)
	put("dead", []store.Session{{Device: "z", Since: t0}}, nil)
	// b moves to n2; n1's late close of its older session keeps it there.
	put("n2", []store.Session{{Device: "b", Since: t0.Add(time.Second)}}, nil)
	put("n1", nil, []store.Session{{Device: "b", Since: t0}})
	// c: n1 closes it.
	put("n1", nil, []store.Session{{Device: "c", Since: t0}})
	// an older up arriving late does not take a newer session back.
	put("n1", []store.Session{{Device: "b", Since: t0.Add(-time.Second)}}, nil)
	time.Sleep(200 * time.Millisecond) // "dead" expires
	got, err := s.Sessions(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]store.Session{
		"a": {Device: "a", Node: "n1", Since: t0},
		"b": {Device: "b", Node: "n2", Since: t0.Add(time.Second)},
	}
	if len(got) != len(want) {
		t.Fatalf("Sessions = %v, want %v", got, want)
	}
	for d, w := range want {
		if g := got[d]; g.Node != w.Node || !g.Since.Equal(w.Since) {
			t.Errorf("session of %s = %+v, want %+v", d, g, w)
		}
	}
	some, err := s.Sessions(ctx, []string{"b", "z", "nope"})
	if err != nil || len(some) != 1 || some["b"].Node != "n2" {
		t.Fatalf("Sessions(b, z, nope) = %v, %v; want b on n2 only", some, err)
	}
	live, err := s.Heartbeat(ctx, store.Node{ID: "n1"}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, n := range live {
		ids = append(ids, n.ID)
		if n.Seen.IsZero() || n.Started.IsZero() {
			t.Errorf("node %+v: want seen and started times", n)
		}
	}
	if !slices.Equal(ids, []string{"n1", "n2"}) {
		t.Fatalf("live nodes %v, want [n1 n2]", ids)
	}
}

// Sweep removes a node dead for longer than deadFor: its row, sessions
// and mail; Leave does so at once for a node that stops.
func TestClusterSweepAndLeave(t *testing.T) {
	s, _ := open(t, Options{})
	ctx := context.Background()
	for _, n := range []struct {
		id  string
		ttl time.Duration
	}{{"live", time.Minute}, {"dead", 50 * time.Millisecond}, {"leaving", time.Minute}} {
		if _, err := s.Heartbeat(ctx, store.Node{ID: n.id}, n.ttl); err != nil {
			t.Fatal(err)
		}
		if err := s.PutSessions(ctx, n.id, []store.Session{{Device: "d-" + n.id, Since: time.Now()}}, nil); err != nil {
			t.Fatal(err)
		}
		if err := s.Send(ctx, store.Mail{To: n.id, From: "x", Kind: store.MailReload, Detail: "policy"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Leave(ctx, "leaving"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(150 * time.Millisecond)
	if n, err := s.Sweep(ctx, time.Hour); err != nil || n != 0 {
		t.Fatalf("Sweep(1h) = %d, %v; want nothing removed yet", n, err)
	}
	time.Sleep(50 * time.Millisecond)
	n, err := s.Sweep(ctx, 100*time.Millisecond)
	if err != nil || n != 3 {
		t.Fatalf("Sweep = %d, %v; want 3 rows (node, session, mail)", n, err)
	}
	var rows int
	if err := s.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM kf_nodes) + (SELECT count(*) FROM kf_sessions) + (SELECT count(*) FROM kf_mail)`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != 3 {
		t.Fatalf("%d rows left, want the live node's 3", rows)
	}
}

// Wake fires within 200 ms of a Send to its node, and only then.
func TestClusterWake(t *testing.T) {
	s, _ := open(t, Options{})
	ctx := context.Background()
	w1, w2 := s.Wake("wake-n1"), s.Wake("wake-n2")
	if w1 == nil || w2 == nil {
		t.Fatal("Wake = nil on PostgreSQL")
	}
	// The listener signals every node when it connects: drain that.
	deadline := time.After(2 * time.Second)
	for drained := 0; drained < 2; {
		select {
		case <-w1:
			drained++
		case <-w2:
			drained++
		case <-deadline:
			t.Fatal("the listening connection did not come up within 2 s")
		}
	}
	for i := range 3 {
		start := time.Now()
		if err := s.Send(ctx, store.Mail{To: "wake-n1", From: "wake-n2", Kind: store.MailReload, Detail: "policy"}); err != nil {
			t.Fatal(err)
		}
		select {
		case <-w1:
			t.Logf("wake %d after %v", i, time.Since(start))
		case <-time.After(200 * time.Millisecond):
			t.Fatalf("no wake within 200 ms of Send")
		}
	}
	select {
	case <-w2:
		t.Fatal("woke a node no mail was sent to")
	case <-time.After(50 * time.Millisecond):
	}
}
