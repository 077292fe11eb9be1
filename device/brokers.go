package device

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
)

// SplitBrokers splits a broker list, addresses host:port separated by
// commas ("a:8883,b:8883"), as --broker and the keystore's device.json
// hold it. Blank entries are dropped. One address is a list of one, so a
// keystore written before lists were allowed reads unchanged.
func SplitBrokers(s string) []string {
	var out []string
	for _, b := range strings.Split(s, ",") {
		if b = strings.TrimSpace(b); b != "" {
			out = append(out, b)
		}
	}
	return out
}

// errNoBroker: neither the options nor the keystore name a broker.
var errNoBroker = errors.New("device: no broker address")

// brokerRing is the brokers an agent may connect to and the one it uses.
// Every fleetd node (or every broker of a cluster) accepts every device,
// so the agent starts at a random one, which spreads a fleet that starts
// together, and moves to the next when a connection cannot be made or is
// lost. Only the agent's run loop touches it.
type brokerRing struct {
	addrs []string
	cur   int
}

func newBrokerRing(addrs []string) *brokerRing {
	r := &brokerRing{addrs: addrs}
	if len(addrs) > 1 {
		r.cur = rand.N(len(addrs))
	}
	return r
}

// current returns the address to connect to.
func (r *brokerRing) current() (string, error) {
	if len(r.addrs) == 0 {
		return "", errNoBroker
	}
	return r.addrs[r.cur], nil
}

// next moves to the following broker; it reports whether there was
// another one to move to.
func (r *brokerRing) next() bool {
	if len(r.addrs) < 2 {
		return false
	}
	r.cur = (r.cur + 1) % len(r.addrs)
	return true
}

// brokerAddr returns the broker to connect to and its host name, which
// the broker's TLS certificate must name.
func (a *Agent) brokerAddr() (addr, host string, err error) {
	if addr, err = a.ring.current(); err != nil {
		return "", "", err
	}
	if host, _, err = net.SplitHostPort(addr); err != nil {
		return "", "", fmt.Errorf("device: broker address %q: %w", addr, err)
	}
	return addr, host, nil
}
