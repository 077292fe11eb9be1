package rotation

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestIntakeFlooderDoesNotDelayOthers: with one worker and a flooder's
// queue full, another device's message is handled after at most one of the
// flooder's, and the flooder's excess is refused while the other device's
// messages are still taken.
func TestIntakeFlooderDoesNotDelayOthers(t *testing.T) {
	in := newIntake(64, 1024)
	for i := range 64 {
		if !in.add("flood", uplink{topic: "flood", payload: []byte{byte(i)}}) {
			t.Fatalf("flooder's message %d refused before its queue was full", i)
		}
	}
	if in.add("flood", uplink{topic: "flood"}) {
		t.Error("flooder's 65th message queued, want refused")
	}
	if !in.add("dev", uplink{topic: "dev"}) {
		t.Fatal("another device's message refused while the flooder's queue is full")
	}
	var order []string
	for range 65 {
		q, u, ok := in.next()
		if !ok {
			t.Fatal("intake closed")
		}
		order = append(order, u.topic)
		in.done(q)
	}
	if order[0] != "dev" && order[1] != "dev" {
		t.Errorf("the other device's message came at position %d, want within the first two: %v", indexOf(order, "dev"), order[:5])
	}
}

// TestIntakeTotalBound: the intake as a whole is bounded too.
func TestIntakeTotalBound(t *testing.T) {
	in := newIntake(64, 100)
	n := 0
	for i := range 1000 {
		if in.add(fmt.Sprintf("d%d", i), uplink{}) {
			n++
		}
	}
	if n != 100 {
		t.Errorf("queued %d messages, want 100", n)
	}
}

// TestIntakeOrderAndExclusion: under many workers, each sender's messages
// are handled in order and never two at a time.
func TestIntakeOrderAndExclusion(t *testing.T) {
	const senders, per, workers = 20, 50, 8
	in := newIntake(per, senders*per)
	var busy [senders]atomic.Int32
	var mu sync.Mutex
	got := map[string][]byte{}
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				q, u, ok := in.next()
				if !ok {
					return
				}
				var s int
				fmt.Sscanf(u.topic, "s%d", &s)
				if busy[s].Add(1) != 1 {
					t.Errorf("sender %d handled twice at once", s)
				}
				mu.Lock()
				got[u.topic] = append(got[u.topic], u.payload[0])
				mu.Unlock()
				busy[s].Add(-1)
				in.done(q)
			}
		}()
	}
	for i := range per {
		for s := range senders {
			key := fmt.Sprintf("s%d", s)
			if !in.add(key, uplink{topic: key, payload: []byte{byte(i)}}) {
				t.Fatalf("%s message %d refused", key, i)
			}
		}
	}
	for {
		mu.Lock()
		n := 0
		for _, v := range got {
			n += len(v)
		}
		mu.Unlock()
		if n == senders*per {
			break
		}
		time.Sleep(time.Millisecond)
	}
	in.close()
	wg.Wait()
	for key, seq := range got {
		for i, b := range seq {
			if int(b) != i {
				t.Fatalf("%s: message %d handled at position %d: %v", key, b, i, seq)
			}
		}
	}
	if in.add("late", uplink{}) {
		t.Error("a closed intake took a message")
	}
}

func indexOf(list []string, s string) int {
	for i, x := range list {
		if x == s {
			return i
		}
	}
	return -1
}
