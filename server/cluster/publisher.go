package cluster

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/keyfleet/keyfleet/server/online"
	"github.com/keyfleet/keyfleet/server/store"
)

// ClusterPublisher routes what the engine, trust and releases send: to
// this node's link, or as mail to the node holding the device's session.
type ClusterPublisher struct {
	n     *Node
	local Publisher
}

// Publisher wraps this node's link; the node also publishes its mail on
// it. For a single process it returns a publisher that passes through.
func (n *Node) Publisher(local Publisher) *ClusterPublisher {
	n.pub.Store(&publisherBox{local})
	return &ClusterPublisher{n: n, local: local}
}

// Publish sends b on topic. A device's downlink goes to the node holding
// its session (see the package doc); a broadcast goes out here and to
// every other live node; anything else, and everything for a single
// process, goes out here.
func (p *ClusterPublisher) Publish(ctx context.Context, topic string, b []byte) error {
	n := p.n
	if n.cs == nil {
		return p.local.Publish(ctx, topic, b)
	}
	if device, down, ok := p.deviceOf(topic); ok {
		if n.localPresent(device) {
			return p.local.Publish(ctx, topic, b)
		}
		holder, err := n.holder(ctx, device)
		if err != nil {
			return err
		}
		payloads := [][]byte{b}
		if down && p.signed(b) && n.o.Delegations != nil {
			payloads = append(n.o.Delegations(), b)
		}
		if holder == n.id {
			return p.local.Publish(ctx, topic, b)
		}
		if holder == "" {
			// Connected nowhere this cluster knows of: published here, as one
			// fleetd does, after the delegation. Workers behind an external
			// broker record no sessions, and the device's hello may have
			// been answered by another worker with its own delegation.
			return publishAll(ctx, p.local, topic, payloads)
		}
		if err := n.sendMail(ctx, store.Mail{To: holder, From: n.id, Kind: store.MailDownlink, Device: device,
			Topic: topic, Payloads: payloads}); err != nil {
			return fmt.Errorf("cluster: forward to node %s: %w", holder, err)
		}
		return nil
	}
	if err := p.local.Publish(ctx, topic, b); err != nil {
		return err
	}
	if strings.HasPrefix(topic, n.o.Topics.BroadcastTopic("")) && topic != n.o.Topics.Delegation() {
		var mail []store.Mail
		for _, to := range n.others() {
			mail = append(mail, store.Mail{To: to, From: n.id, Kind: store.MailDownlink, Topic: topic, Payloads: [][]byte{b}})
		}
		if err := n.cs.Send(ctx, mail...); err != nil {
			return fmt.Errorf("cluster: broadcast %s to the other nodes: %w", topic, err)
		}
	}
	return nil
}

// PublishRetained publishes here only: every node republishes its
// retained messages (the anchor sets) to its own broker.
func (p *ClusterPublisher) PublishRetained(ctx context.Context, topic string, b []byte) error {
	return p.local.PublishRetained(ctx, topic, b)
}

// deviceOf returns the device a topic is addressed to, and whether it is
// the device's down topic (where delegations go) rather than its
// re-enrolment answer.
func (p *ClusterPublisher) deviceOf(topic string) (string, bool, bool) {
	t := p.n.o.Topics
	if d, err := t.ParseDown(topic); err == nil {
		return d, true, true
	}
	if rest, ok := strings.CutSuffix(topic, "/reenroll/down"); ok {
		if d, ok := strings.CutPrefix(rest, t.Root()+"/d/"); ok && t.ReenrollDown(d) == topic && !strings.Contains(d, "/") {
			return d, false, true
		}
	}
	return "", false, false
}

// signed reports whether b is a signed message: the device checks it
// against a delegation, which must then come first.
func (p *ClusterPublisher) signed(b []byte) bool {
	env, err := p.n.o.Codec.Open(b)
	return err == nil && env.IsSigned()
}

// localPresent reports whether this node's broker holds a session of the
// device.
func (n *Node) localPresent(device string) bool {
	cb := n.closer.Load()
	if cb == nil {
		return false
	}
	l, ok := cb.c.(Local)
	return ok && l.Present(device)
}

// holder returns the live node holding the device's session, "" for none:
// from the cluster's session snapshot (at most snapshotAge old, one query
// for all devices) when it names another node, else read for this device
// alone. A snapshot that went stale (the device moved) sends the mail to a
// node that no longer holds the device; that node routes it on (reroute).
func (n *Node) holder(ctx context.Context, device string) (string, error) {
	if x, ok := n.snapshot()[device]; ok && x.Node != n.id {
		return x.Node, nil
	}
	return n.holderNow(ctx, device)
}

// holderNow reads the live node holding the device's session, "" for none.
func (n *Node) holderNow(ctx context.Context, device string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ss, err := n.cs.Sessions(ctx, []string{device})
	if err != nil {
		return "", fmt.Errorf("cluster: where is %s connected: %w", device, err)
	}
	return ss[device].Node, nil
}

// Delegations returns what a device needs to check downlinks signed by
// key: its delegation, and its second one under a prepared anchor set.
func Delegations(key *online.Key) [][]byte {
	if key == nil {
		return nil
	}
	out := [][]byte{key.Delegation}
	if next, _ := key.NextDelegation(); next != nil {
		out = append(out, next)
	}
	return out
}

// publishAll publishes each payload on topic in order.
func publishAll(ctx context.Context, pub Publisher, topic string, payloads [][]byte) error {
	for _, b := range payloads {
		if err := pub.Publish(ctx, topic, b); err != nil {
			return err
		}
	}
	return nil
}
