package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/keyfleet/keyfleet/server/store"
)

// Downlink mail is batched: a bulk rotation publishes dozens of downlinks
// for devices held by other nodes at once, and one transaction per
// downlink made the store, not the nodes, the limit (make bench (f)).
const (
	// mailLinger is how long the first downlink of a batch waits for
	// others: the latency a forwarded downlink gains, at most.
	mailLinger = 5 * time.Millisecond
	// mailBatch is the most mail one Send takes.
	mailBatch = 256
	// mailQueue is how many downlinks may wait for the next Send.
	mailQueue = 1024
)

// errNodeClosed: the node left the cluster while a downlink waited.
var errNodeClosed = errors.New("cluster: node closed")

// queuedMail is a downlink waiting for its batch, and where its Send's
// result goes.
type queuedMail struct {
	m    store.Mail
	done chan error
}

// sendMail queues m for the next batched Send and waits for that Send.
// One sender takes the queue in order, so two downlinks of one device
// sent one after the other are received in that order.
func (n *Node) sendMail(ctx context.Context, m store.Mail) error {
	q := queuedMail{m: m, done: make(chan error, 1)}
	select {
	case n.mailq <- q:
	case <-n.ctx.Done():
		return errNodeClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-q.done:
		return err
	case <-n.ctx.Done():
		return errNodeClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

// mailSender sends the queued downlinks: the first of a batch waits
// mailLinger for more (or until mailBatch are queued), then all go in one
// Send, one transaction.
func (n *Node) mailSender() {
	batch := make([]queuedMail, 0, mailBatch)
	for {
		batch = batch[:0]
		select {
		case <-n.ctx.Done():
			return
		case q := <-n.mailq:
			batch = append(batch, q)
		}
		linger := time.NewTimer(mailLinger)
	fill:
		for len(batch) < mailBatch {
			select {
			case q := <-n.mailq:
				batch = append(batch, q)
			case <-linger.C:
				break fill
			case <-n.ctx.Done():
				break fill
			}
		}
		linger.Stop()
		mail := make([]store.Mail, len(batch))
		for i, q := range batch {
			mail[i] = q.m
		}
		ctx, cancel := context.WithTimeout(n.ctx, mailTimeout)
		err := n.cs.Send(ctx, mail...)
		cancel()
		if err != nil {
			err = fmt.Errorf("cluster: forward %d downlinks: %w", len(mail), err)
		}
		for _, q := range batch {
			q.done <- err
		}
	}
}
