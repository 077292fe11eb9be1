package rotation

import (
	"container/heap"
	"context"
	"sync"
	"time"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/store"
)

type graceItem struct {
	device  string
	slot    protocol.Slot
	version uint32
	at      time.Time
}

type graceHeap []graceItem

func (h graceHeap) Len() int           { return len(h) }
func (h graceHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h graceHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *graceHeap) Push(x any)        { *h = append(*h, x.(graceItem)) }
func (h *graceHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// graceKey names one version on the grace timer.
type graceKey struct {
	device  string
	slot    protocol.Slot
	version uint32
}

// graceQueue orders superseded versions by the end of their grace. A
// version is queued once: the periodic grace sweep (SweepGrace) pushes
// what it finds again and again, and the heap must not grow with it.
type graceQueue struct {
	mu     sync.Mutex
	h      graceHeap
	queued map[graceKey]bool
	wake   chan struct{}
}

func newGraceQueue() *graceQueue {
	return &graceQueue{wake: make(chan struct{}, 1), queued: map[graceKey]bool{}}
}

func (q *graceQueue) push(it graceItem) {
	k := graceKey{it.device, it.slot, it.version}
	q.mu.Lock()
	if q.queued[k] {
		q.mu.Unlock()
		return
	}
	q.queued[k] = true
	heap.Push(&q.h, it)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// due pops the items whose time has come and returns the wait until the next.
func (q *graceQueue) due(now time.Time) ([]graceItem, time.Duration) {
	q.mu.Lock()
	defer q.mu.Unlock()
	var out []graceItem
	for len(q.h) > 0 && !q.h[0].at.After(now) {
		it := heap.Pop(&q.h).(graceItem)
		delete(q.queued, graceKey{it.device, it.slot, it.version})
		out = append(out, it)
	}
	next := time.Second
	if len(q.h) > 0 {
		if d := q.h[0].at.Sub(now); d < next {
			next = d
		}
	}
	return out, next
}

// runGrace retires superseded versions when their grace ends. It polls at
// least every second so that an injected clock that jumps is noticed.
func (e *Engine) runGrace(ctx context.Context) {
	for {
		items, wait := e.grace.due(e.now())
		for _, it := range items {
			e.retire(ctx, it)
		}
		if wait < 10*time.Millisecond {
			wait = 10 * time.Millisecond
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-e.grace.wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// retire ends the grace of one version, if it is still superseded and its
// grace is over, and says whether it did.
func (e *Engine) retire(ctx context.Context, it graceItem) bool {
	now := e.now()
	var changes []lifecycle.Change
	serial := ""
	_, err := e.st.UpdateDevice(ctx, it.device, func(d *store.Device) ([]store.Event, error) {
		changes, serial = nil, ""
		s := d.Slot(it.slot)
		v := s.Version(it.version)
		if v == nil || v.State != lifecycle.StateSuperseded || v.GraceUntil.After(now) {
			return nil, store.ErrNoChange
		}
		c, err := lifecycle.Manage(s, d.ID, it.slot, "grace").Retire(it.version, now)
		if err != nil {
			return nil, err
		}
		changes, serial = c, v.Serial
		return events(it.slot, changes), nil
	})
	if err != nil {
		if ctx.Err() == nil {
			e.log.Error("retire failed; retrying", "device", it.device, "version", it.version, "err", err)
			it.at = now.Add(5 * time.Second)
			e.grace.push(it)
		}
		return false
	}
	if changes == nil {
		return false
	}
	e.stats.Retired.Add(1)
	e.emit(changes)
	if e.closer != nil {
		if n := e.closer.DisconnectCredential(it.device, serial); n > 0 {
			e.log.Info("dropped sessions of a retired credential", "device", it.device, "version", it.version, "sessions", n)
		}
	}
	if err := e.sendRetire(ctx, it.device, it.slot, it.version); err != nil {
		e.log.Warn("retire not sent; the device gets it on its next hello", "device", it.device, "err", err)
	}
	return true
}
