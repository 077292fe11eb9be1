package broker

import (
	"errors"
	"log/slog"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/keyfleet/keyfleet/certs/identity"
)

// serverGate holds devices back until a fleetd session has subscribed to
// their uplinks. The embedded broker starts listening before fleetd's own
// session connects; a device reconnecting in between (fleetd restarted
// under a fleet) would publish its hello or its activation to a topic
// nobody reads yet, and the broker drops it: an activation is sent once,
// so fleetd would never learn of it. Refused the way an undecidable
// credential check is (no CONNACK), the device sees a network failure and
// retries with its usual backoff.
type serverGate struct {
	mqtt.HookBase
	ids  *identities
	up   string // the uplinks' shared subscription filter
	open atomic.Bool
	log  *slog.Logger
}

// ID names the hook.
func (g *serverGate) ID() string { return "keyfleet-server-gate" }

// Provides lists the events the hook handles.
func (g *serverGate) Provides(b byte) bool { return b == mqtt.OnSubscribed }

// OnSubscribed opens the gate once a server session's subscription to the
// uplinks was granted. It stays open: a later loss of that session is
// fleetd's link's to recover, as for any broker.
func (g *serverGate) OnSubscribed(cl *mqtt.Client, pk packets.Packet, reasonCodes []byte) {
	if g.open.Load() {
		return
	}
	s, ok := g.ids.get(cl)
	if !ok || s.id.Role != identity.RoleServer {
		return
	}
	for i, f := range pk.Filters {
		if f.Filter == g.up && i < len(reasonCodes) && reasonCodes[i] < packets.ErrUnspecifiedError.Code {
			g.open.Store(true)
			g.log.Info("broker: fleetd subscribed to the uplinks; devices admitted", "client", cl.ID)
			return
		}
	}
}

// admits reports whether devices may connect; a nil gate always admits.
func (g *serverGate) admits() bool { return g == nil || g.open.Load() }

// errServerNotSubscribed ends a device connection the gate held back.
var errServerNotSubscribed = errors.New("broker: fleetd not subscribed to the uplinks yet")
