package rotation_test

import (
	"context"
	"fmt"
	"hash/fnv"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/policy"
)

// TestFloodDoesNotDelayQueueMate: a device that floods fleetd with signed
// messages (each one a store read and a signature check before it is found
// to be a replay) does not delay another device's message, even one whose
// topic hashed to the flooder's worker queue under the former sharding
// (FNV-32a of the topic over 64 queues), where it waited behind up to 1,024
// of the flooder's messages. The other device's hello is answered at once;
// the flooder's excess is dropped and counted as queue-full.
func TestFloodDoesNotDelayQueueMate(t *testing.T) {
	h := newHarness(t, policy.Policy{})
	floodKey, _ := h.device("flooder")
	shard := func(topic string) uint32 {
		f := fnv.New32a()
		f.Write([]byte(topic))
		return f.Sum32() % 64
	}
	victim := ""
	for i := 0; victim == ""; i++ {
		if name := fmt.Sprintf("victim-%d", i); shard(topics.Up(name)) == shard(topics.Up("flooder")) {
			victim = name
		}
	}
	victimKey, _ := h.device(victim)
	ctx, cancel := context.WithCancel(context.Background())
	if err := h.e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); h.e.Wait() })

	seal := func(m protocol.Message, dev string) []byte {
		key := floodKey
		if dev == victim {
			key = victimKey
		}
		b, err := h.codec.Seal(protocol.Stamp(m, h.clk.Now(), 0), key, dev)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	hello := func(anchors uint32) *protocol.Hello {
		return &protocol.Hello{Slots: []protocol.SlotVersion{{Slot: protocol.SlotIdentity, Active: 1}}, Anchors: anchors}
	}
	flood := seal(hello(4), "flooder")
	for range 5000 {
		h.e.Submit(ctx, topics.Up("flooder"), flood)
	}
	start := time.Now()
	// The victim is behind on anchors: fleetd answers its hello with them.
	h.e.Submit(ctx, topics.Up(victim), seal(hello(1), victim))
	answered := func() bool {
		h.out.mu.Lock()
		defer h.out.mu.Unlock()
		for _, p := range h.out.msgs {
			if p.topic == topics.Down(victim) {
				return true
			}
		}
		return false
	}
	for !answered() {
		if time.Since(start) > 10*time.Second {
			t.Fatal("the victim's hello was never answered: dropped, or stuck behind the flood")
		}
		time.Sleep(time.Millisecond)
	}
	took := time.Since(start)
	st := h.e.Stats()
	t.Logf("victim answered after %v; flooder: %d queue-full, %d replays handled meanwhile", took, st.Rejected["queue-full"], st.Rejected["replay"])
	if took > 200*time.Millisecond {
		t.Errorf("the victim's hello took %v to be answered behind the flood, want < 200ms", took)
	}
	if st.Rejected["queue-full"] == 0 {
		t.Error("no flood message was dropped: the flooder's queue is not bounded")
	}
}
