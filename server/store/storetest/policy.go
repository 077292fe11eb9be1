package storetest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/server/store"
)

// policyCases are run for stores that implement store.PolicyStore.
var policyCases = []struct {
	name string
	fn   func(t *testing.T, s store.PolicyStore, audit store.Store)
}{
	{"PolicyVersionsAppendAndAudit", testPolicyAppend},
	{"PolicyCancelledWritesNothing", testPolicyCancelled},
}

// testPolicyAppend: versions count from 1 in order, the newest is
// LatestPolicy, each round-trips, and each append writes its audit record
// in the same transaction with the version and hash in its detail.
func testPolicyAppend(t *testing.T, s store.PolicyStore, audit store.Store) {
	ctx := context.Background()
	if _, err := s.LatestPolicy(ctx); !errors.Is(err, store.ErrNotExist) {
		t.Fatalf("latest of none: %v, want ErrNotExist", err)
	}
	before := auditCount(t, audit)
	for i := 1; i <= 3; i++ {
		p := &store.PolicyVersion{Text: []byte(fmt.Sprintf("grace: %dd\n", i)), SHA256: fmt.Sprintf("h%d", i),
			Actor: "admin:op", AppliedAt: epoch.Add(time.Duration(i) * time.Second)}
		if err := s.AppendPolicy(ctx, p, store.Event{Action: "policy-applied", Actor: p.Actor}); err != nil {
			t.Fatal(err)
		}
		if p.Version != uint64(i) {
			t.Fatalf("append %d: version %d", i, p.Version)
		}
	}
	recs := auditRecords(t, audit, 0)
	if got := len(recs) - before; got != 3 {
		t.Fatalf("%d audit records for 3 applied policies", got)
	}
	if last := recs[len(recs)-1]; last.Action != "policy-applied" || last.Detail != "policy v3 sha256 h3" || last.Actor != "admin:op" {
		t.Errorf("audit record %+v, want policy-applied with version and hash", last)
	}
	p, err := s.LatestPolicy(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if p.Version != 3 || string(p.Text) != "grace: 3d\n" || p.SHA256 != "h3" || p.Actor != "admin:op" ||
		!p.AppliedAt.Equal(epoch.Add(3*time.Second)) {
		t.Errorf("latest %+v, want version 3 as appended", p)
	}
	var vs []uint64
	if err := s.ForEachPolicy(ctx, func(p *store.PolicyVersion) error { vs = append(vs, p.Version); return nil }); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(vs) != "[1 2 3]" {
		t.Errorf("versions %v, want [1 2 3]", vs)
	}
}

func testPolicyCancelled(t *testing.T, s store.PolicyStore, audit store.Store) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	before := auditCount(t, audit)
	if err := s.AppendPolicy(ctx, &store.PolicyVersion{Text: []byte("x")}, store.Event{Action: "policy-applied"}); err == nil {
		t.Fatal("append with a cancelled context succeeded")
	}
	if _, err := s.LatestPolicy(context.Background()); !errors.Is(err, store.ErrNotExist) {
		t.Errorf("after a cancelled append: %v, want ErrNotExist", err)
	}
	if auditCount(t, audit) != before {
		t.Error("a cancelled append wrote an audit record")
	}
}
