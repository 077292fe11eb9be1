package rotation

import "sync"

// Intake bounds: how many uplinks may wait for one device (or other
// sender key) and for all of them together.
const (
	// defaultDeviceQueue is a device's queue: an honest agent has a few
	// messages in flight at a time (a catch-up after a long absence, a few
	// dozen); more are a flood, and its excess is dropped.
	defaultDeviceQueue = 64
	// defaultTotalQueue bounds the memory of the whole intake.
	defaultTotalQueue = 64 * 1024
)

// intake holds the uplinks waiting for a worker: one bounded FIFO per
// sender (keyed by topic, which names the device), served round-robin.
//
// It gives two guarantees the engine relies on:
//   - one sender's messages are handled one at a time and in arrival
//     order (a device's enroll is never handled before its hello);
//   - one sender's backlog never delays another's messages: a worker takes
//     one message of the sender at the head of the ready list, and the
//     sender goes to the back of it if more are waiting. A flooder thus
//     holds at most one worker at a time, and every other sender waits for
//     at most one turn of the ready list, however long its queue is.
//
// A message that finds its sender's queue full (or the intake full) is
// dropped: only that sender loses it, and the caller counts it.
type intake struct {
	perSender, maxTotal int

	mu      sync.Mutex
	cond    *sync.Cond
	senders map[string]*senderQueue
	ready   []*senderQueue // senders with messages and no worker, oldest first
	total   int
	closed  bool
}

type senderQueue struct {
	key   string
	msgs  []uplink
	busy  bool // a worker is handling one of its messages
	ready bool // it is in the ready list
}

func newIntake(perSender, maxTotal int) *intake {
	in := &intake{perSender: perSender, maxTotal: maxTotal, senders: map[string]*senderQueue{}}
	in.cond = sync.NewCond(&in.mu)
	return in
}

// add queues u for sender key. It never blocks; it returns false, and
// queues nothing, when the sender's queue or the intake is full or the
// intake is closed.
func (in *intake) add(key string, u uplink) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.closed || in.total >= in.maxTotal {
		return false
	}
	q := in.senders[key]
	if q == nil {
		q = &senderQueue{key: key}
		in.senders[key] = q
	}
	if len(q.msgs) >= in.perSender {
		return false
	}
	q.msgs = append(q.msgs, u)
	in.total++
	if !q.busy && !q.ready {
		q.ready = true
		in.ready = append(in.ready, q)
		in.cond.Signal()
	}
	return true
}

// next waits for a message to handle and returns it with its sender, who
// is busy until done is called. ok is false once the intake is closed.
func (in *intake) next() (q *senderQueue, u uplink, ok bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	for len(in.ready) == 0 && !in.closed {
		in.cond.Wait()
	}
	if in.closed {
		return nil, uplink{}, false
	}
	q = in.ready[0]
	in.ready[0] = nil
	in.ready = in.ready[1:]
	q.ready = false
	u = q.msgs[0]
	q.msgs[0] = uplink{}
	q.msgs = q.msgs[1:]
	in.total--
	q.busy = true
	return q, u, true
}

// done ends the handling of q's message: q goes to the back of the ready
// list if more of its messages wait, and is forgotten if none do.
func (in *intake) done(q *senderQueue) {
	in.mu.Lock()
	defer in.mu.Unlock()
	q.busy = false
	if len(q.msgs) == 0 {
		if in.senders[q.key] == q {
			delete(in.senders, q.key)
		}
		return
	}
	q.ready = true
	in.ready = append(in.ready, q)
	in.cond.Signal()
}

// close wakes every waiting worker; next returns false from then on and
// what is still queued is dropped.
func (in *intake) close() {
	in.mu.Lock()
	in.closed = true
	in.mu.Unlock()
	in.cond.Broadcast()
}
