package cluster_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/server/cluster"
	"github.com/keyfleet/keyfleet/server/store"
)

// published records what a node's link was given, in order.
type published struct {
	mu   sync.Mutex
	msgs map[string][]string // topic -> payloads
	n    int
}

func (p *published) Publish(_ context.Context, topic string, b []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.msgs == nil {
		p.msgs = map[string][]string{}
	}
	p.msgs[topic] = append(p.msgs[topic], string(b))
	p.n++
	return nil
}

func (p *published) PublishRetained(ctx context.Context, topic string, b []byte) error {
	return p.Publish(ctx, topic, b)
}

func (p *published) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n
}

// A bulk rotation's downlinks to devices held by another node cost one
// sessions read and a few transactions, not a read and a transaction each:
// the statements node a sends for N devices (two downlinks each, one after
// the other, all devices at once) stay near one INSERT per downlink, and b
// publishes every downlink of a device in the order it was sent.
func TestDownlinksBatched(t *testing.T) {
	const devices = 64
	dsn := pg.NewSchema(t)
	ctx := context.Background()
	stA, stB := openStore(t, dsn), openStore(t, dsn)
	quiet := cluster.Options{LeaseTTL: time.Minute, Poll: time.Hour, PolicyEvery: time.Hour, Logger: fleettest.Logger(t)}
	ob := quiet
	ob.NodeID = "b"
	b, err := cluster.Open(ctx, stB, ob)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	var onB, onA published
	b.Publisher(&onB)
	var held []store.Session
	for i := range devices {
		held = append(held, store.Session{Device: fmt.Sprintf("dev-%d", i), Node: "b", Since: time.Now()})
	}
	if err := stB.PutSessions(ctx, "b", held, nil); err != nil {
		t.Fatal(err)
	}
	oa := quiet
	oa.NodeID = "a"
	a, err := cluster.Open(ctx, stA, oa)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	pub := a.Publisher(&onA)

	before := stA.Stats().Statements
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, devices)
	for i := range devices {
		wg.Go(func() {
			topic := fmt.Sprintf("kf/d/dev-%d/down", i)
			for k := range 2 {
				if err := pub.Publish(ctx, topic, fmt.Appendf(nil, "%d-%d", i, k)); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	stmts := stA.Stats().Statements - before
	t.Logf("%d downlinks to another node: %d statements, %v", 2*devices, stmts, took)
	// One INSERT per downlink, one sessions read, and BEGIN, NOTIFY and
	// COMMIT per transaction: unbatched it was five statements a downlink.
	if limit := uint64(2*devices + 1 + 3*12); stmts > limit {
		t.Errorf("%d downlinks cost %d statements, want at most %d", 2*devices, stmts, limit)
	}
	deadline := time.Now().Add(5 * time.Second)
	for onB.count() < 2*devices && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	onB.mu.Lock()
	defer onB.mu.Unlock()
	if onB.n != 2*devices {
		t.Fatalf("b published %d downlinks, want %d", onB.n, 2*devices)
	}
	for i := range devices {
		topic := fmt.Sprintf("kf/d/dev-%d/down", i)
		if got, want := fmt.Sprint(onB.msgs[topic]), fmt.Sprintf("[%d-0 %d-1]", i, i); got != want {
			t.Errorf("b published %s on %s, want %s", got, topic, want)
		}
	}
	if n := onA.count(); n != 0 {
		t.Errorf("a published %d downlinks of devices held by b itself", n)
	}
}
