package cluster

import (
	"context"
	"time"

	"github.com/keyfleet/keyfleet/server/rotation"
	"github.com/keyfleet/keyfleet/server/store"
)

// mailTimeout bounds the store calls of Closer, whose interface has no
// context.
const mailTimeout = 5 * time.Second

// Closer wraps this node's broker (*broker.Embedded, or dynsec with an
// external broker) so that dropping a device's sessions reaches every
// node; the node also serves its mail and its presence checks with it.
// For a single process it returns local.
func (n *Node) Closer(local rotation.SessionCloser) rotation.SessionCloser {
	n.closer.Store(&closerBox{local})
	if n.cs == nil {
		return local
	}
	return &clusterCloser{n: n, local: local}
}

// CloserSetter is what sets the engine's session closer
// (*rotation.Engine); dynsec takes one.
type CloserSetter interface {
	SetSessionCloser(rotation.SessionCloser)
}

// WrapCloserSetter wraps the engine's SetSessionCloser for parts that set
// the engine's closer themselves (dynsec with an external broker), so that
// what they set is wrapped by Closer too.
func (n *Node) WrapCloserSetter(s CloserSetter) CloserSetter { return closerSetter{n: n, s: s} }

type closerSetter struct {
	n *Node
	s CloserSetter
}

// SetSessionCloser sets the engine's closer to the node's wrapper of sc.
func (c closerSetter) SetSessionCloser(sc rotation.SessionCloser) {
	c.s.SetSessionCloser(c.n.Closer(sc))
}

type clusterCloser struct {
	n     *Node
	local rotation.SessionCloser
}

// Disconnect drops the device's sessions here and mails every other live
// node to drop theirs (revocation: the device may have reconnected
// anywhere). It returns the sessions dropped here.
func (c *clusterCloser) Disconnect(device string) int {
	dropped := c.local.Disconnect(device)
	var mail []store.Mail
	for _, to := range c.n.others() {
		mail = append(mail, store.Mail{To: to, From: c.n.id, Kind: store.MailDisconnect, Device: device})
	}
	ctx, cancel := context.WithTimeout(c.n.ctx, mailTimeout)
	defer cancel()
	if err := c.n.cs.Send(ctx, mail...); err != nil {
		c.n.log.Error("cluster: disconnect not sent to the other nodes", "device", device, "err", err)
	}
	return dropped
}

// DisconnectCredential drops the sessions of a retired credential here and
// on the node holding the device's session.
func (c *clusterCloser) DisconnectCredential(device, serial string) int {
	dropped := c.local.DisconnectCredential(device, serial)
	ctx, cancel := context.WithTimeout(c.n.ctx, mailTimeout)
	defer cancel()
	holder, err := c.n.holder(ctx, device)
	if err == nil && holder != "" && holder != c.n.id {
		err = c.n.cs.Send(ctx, store.Mail{To: holder, From: c.n.id, Kind: store.MailDisconnectCredential, Device: device, Serial: serial})
	}
	if err != nil {
		c.n.log.Error("cluster: credential disconnect not sent to the holder", "device", device, "serial", serial, "err", err)
	}
	return dropped
}
