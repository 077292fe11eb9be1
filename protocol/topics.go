package protocol

import (
	"fmt"
	"strings"
)

// DefaultTopicPrefix is the topic root used when none is configured.
const DefaultTopicPrefix = "kf"

// Topics builds and parses the MQTT topic names of one deployment. The zero
// value uses DefaultTopicPrefix.
type Topics struct {
	// Prefix is the first topic level; empty means DefaultTopicPrefix.
	Prefix string
}

func (t Topics) prefix() string {
	if t.Prefix == "" {
		return DefaultTopicPrefix
	}
	return t.Prefix
}

// Root returns the first topic level in use.
func (t Topics) Root() string { return t.prefix() }

// Up is the topic a device publishes to: {prefix}/d/{device}/up.
func (t Topics) Up(device string) string { return t.prefix() + "/d/" + device + "/up" }

// Down is the topic the server publishes a device's commands to.
func (t Topics) Down(device string) string { return t.prefix() + "/d/" + device + "/down" }

// Reenroll is the topic a device publishes its re-enrolment to when it
// connects with its birth credential (IDevID): the only topic such a
// session may write.
func (t Topics) Reenroll(device string) string { return t.prefix() + "/d/" + device + "/reenroll" }

// ReenrollDown is where the server answers a re-enrolment: the only topic
// an IDevID session may read.
func (t Topics) ReenrollDown(device string) string {
	return t.prefix() + "/d/" + device + "/reenroll/down"
}

// SharedReenroll is the shared subscription for every device's
// re-enrolment topic.
func (t Topics) SharedReenroll(group string) string {
	return "$share/" + group + "/" + t.prefix() + "/d/+/reenroll"
}

// Anchors is the retained broadcast topic of the current trust-anchor chain.
func (t Topics) Anchors() string { return t.BroadcastTopic("anchors") }

// AnchorsLive carries the same chain, not retained, when it changes: the
// devices connected then learn of it at once without paying for a retained
// copy at every reconnect.
func (t Topics) AnchorsLive() string { return t.BroadcastTopic("anchors-live") }

// FirmwareTopic is the retained broadcast topic of the current firmware
// release (a signed manifest).
func (t Topics) FirmwareTopic() string { return t.BroadcastTopic("firmware") }

// ParseReenroll returns the device id of a re-enrolment topic.
func (t Topics) ParseReenroll(topic string) (string, error) {
	return t.parse(topic, "reenroll")
}

// SharedUp is the shared subscription through which fleetd instances split
// all devices' uplinks between them.
func (t Topics) SharedUp(group string) string {
	return "$share/" + group + "/" + t.prefix() + "/d/+/up"
}

// Broadcast is the filter of the fleet-wide topics every device may
// read ({prefix}/b/#).
func (t Topics) Broadcast() string { return t.prefix() + "/b/#" }

// BroadcastTopic names one fleet-wide topic under {prefix}/b/.
func (t Topics) BroadcastTopic(name string) string { return t.prefix() + "/b/" + name }

// Delegation is the broadcast topic on which fleetd announces a new
// online-key delegation to the devices connected at that moment.
func (t Topics) Delegation() string { return t.BroadcastTopic("delegation") }

// ParseUp returns the device id of an uplink topic, or an error when the
// topic is not one.
func (t Topics) ParseUp(topic string) (string, error) {
	return t.parse(topic, "up")
}

// ParseDown returns the device id of a downlink topic.
func (t Topics) ParseDown(topic string) (string, error) {
	return t.parse(topic, "down")
}

func (t Topics) parse(topic, dir string) (string, error) {
	parts := strings.Split(topic, "/")
	if len(parts) != 4 || parts[0] != t.prefix() || parts[1] != "d" || parts[3] != dir {
		return "", fmt.Errorf("protocol: %q is not a %s topic", topic, dir)
	}
	if err := ValidateDeviceID(parts[2]); err != nil {
		return "", err
	}
	return parts[2], nil
}

// ValidateDeviceID checks that id can be used in topics, certificate names
// and store keys: 1 to MaxDeviceIDLen characters from [A-Za-z0-9._-], not
// starting with a dot.
func ValidateDeviceID(id string) error {
	if id == "" || len(id) > MaxDeviceIDLen || id[0] == '.' {
		return fmt.Errorf("%w: %q", ErrBadDeviceID, id)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return fmt.Errorf("%w: %q", ErrBadDeviceID, id)
		}
	}
	return nil
}
