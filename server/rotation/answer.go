package rotation

import (
	"context"
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
	if ok, _ := e.answers.Allow(from.device + "/" + string(reason)); !ok {
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
