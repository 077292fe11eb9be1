package rotation

import (
	"context"
	"sync"
	"time"

	"github.com/keyfleet/keyfleet/protocol"
)

// AnswerInterval bounds the error answers to refused uplinks: at most one
// per device and reason in each interval, so that a device (or a thief
// with its credential) sending the same bad message in a loop costs one
// signature and one downlink per interval, not one per message. Further
// refusals in the interval are counted only.
const AnswerInterval = 10 * time.Second

// sender is what the handling of an uplink learnt of who sent it, for the
// answer to a refusal.
type sender struct {
	device   string // the device the topic names; "" if none
	ref      []byte // the message id, once the message decoded
	reenroll bool   // it came on the re-enrolment topic: answer there
	quiet    bool   // the device's own error message: never answered
}

// answer tells the device why its uplink was refused, with the reason's
// wire code and its word as the detail, on the topic it used; see
// ReasonInfo.Answered and AnswerInterval.
func (e *Engine) answer(ctx context.Context, from sender, reason Reason) {
	info := reason.Info()
	if from.device == "" || from.quiet || !info.Answered {
		return
	}
	if ok, _ := e.answers.allow(from.device, reason, e.now()); !ok {
		return
	}
	topic := e.opts.Topics.Down(from.device)
	if from.reenroll {
		topic = e.opts.Topics.ReenrollDown(from.device)
	}
	m := protocol.Stamp(&protocol.Error{Code: info.Code, Ref: from.ref, Detail: string(reason)}, e.now(), e.opts.CommandTTL)
	b, err := e.seal(m, from.device)
	if err == nil {
		err = e.publish(ctx, topic, b)
	}
	if err != nil {
		e.log.Warn("error answer not sent", "device", from.device, "reason", string(reason), "err", err)
	}
}

// answerLimiter remembers when each (device, reason) was last let through
// and how many were held back since: what bounds the answers to refused
// uplinks, and what a bounded rejection log needs too.
type answerLimiter struct {
	mu   sync.Mutex
	last map[answerKey]*answerEntry
}

type answerKey struct {
	device string
	reason Reason
}

type answerEntry struct {
	at         time.Time
	suppressed uint64
}

// maxAnswerKeys bounds the limiter's memory: past it, the entries whose
// interval is over are dropped (all of them if none is), which at worst
// lets a few answers through early.
const maxAnswerKeys = 100_000

// allow reports whether (device, reason) may be let through at now, at
// most once per AnswerInterval, and how many were held back since the last
// one let through.
func (l *answerLimiter) allow(device string, reason Reason, now time.Time) (ok bool, suppressed uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last == nil {
		l.last = map[answerKey]*answerEntry{}
	}
	k := answerKey{device, reason}
	if e := l.last[k]; e != nil {
		if now.Sub(e.at) < AnswerInterval && !now.Before(e.at) {
			e.suppressed++
			return false, 0
		}
		suppressed, e.at, e.suppressed = e.suppressed, now, 0
		return true, suppressed
	}
	if len(l.last) >= maxAnswerKeys {
		for k, e := range l.last {
			if now.Sub(e.at) >= AnswerInterval || now.Before(e.at) {
				delete(l.last, k)
			}
		}
		if len(l.last) >= maxAnswerKeys {
			clear(l.last)
		}
	}
	l.last[k] = &answerEntry{at: now}
	return true, 0
}
