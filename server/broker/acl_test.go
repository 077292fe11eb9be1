package broker_test

import (
	"fmt"
	"testing"

	"github.com/keyfleet/keyfleet/certs/identity"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/broker"
	"github.com/keyfleet/keyfleet/server/policy"
)

type aclCase struct {
	id    identity.Identity
	topic string
	write bool
	want  bool
}

func (c aclCase) name() string {
	op := "read"
	if c.write {
		op = "write"
	}
	return fmt.Sprintf("%s %s %s", c.id, op, c.topic)
}

func runACL(t *testing.T, topics protocol.Topics, cases []aclCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name(), func(t *testing.T) {
			acc := policy.AccessFull // the restricted levels: TestAllowedRestricted
			if got := broker.Allowed(topics, tc.id, acc, tc.topic, tc.write); got != tc.want {
				t.Errorf("Allowed(%+v, %v, %v, %q, write=%v): got %v, want %v", topics, tc.id, acc, tc.topic, tc.write, got, tc.want)
			}
		})
	}
}

var (
	dev1   = identity.Identity{Role: identity.RoleDevice, Name: "dev-1"}
	dev2   = identity.Identity{Role: identity.RoleDevice, Name: "dev-2"}
	fleetd = identity.Identity{Role: identity.RoleServer, Name: "fleetd"}
	admin  = identity.Identity{Role: identity.RoleAdmin, Name: "alice"}
	nobody = identity.Identity{Role: identity.Role("robot"), Name: "dev-1"}
	zero   = identity.Identity{}
)

const (
	read  = false
	write = true
)

func TestAllowedDevice(t *testing.T) {
	runACL(t, protocol.Topics{}, []aclCase{
		// Publishing: its own up topic only.
		{dev1, "kf/d/dev-1/up", write, true},
		{dev1, "kf/d/dev-2/up", write, false},
		{dev1, "kf/d/dev-1/down", write, false},
		{dev1, "kf/d/dev-2/down", write, false},
		{dev1, "kf/d/+/up", write, false},
		{dev1, "kf/d/#", write, false},
		{dev1, "kf/#", write, false},
		{dev1, "#", write, false},
		{dev1, "kf/d/dev-1/up/x", write, false},
		{dev1, "kf/d/dev-1", write, false},
		{dev1, "kf/d/dev-10/up", write, false},
		{dev1, "kf/b/delegation", write, false},
		{dev1, "kf/b/#", write, false},
		{dev1, "acme/d/dev-1/up", write, false},
		{dev1, "/kf/d/dev-1/up", write, false},
		{dev1, "kf/d/dev-1/up/", write, false},
		{dev1, "$share/g/kf/d/dev-1/up", write, false},
		{dev1, "$SYS/broker/clients", write, false},
		{dev2, "kf/d/dev-2/up", write, true},
		{dev2, "kf/d/dev-1/up", write, false},

		// Reading: its own down topic and the broadcast topics.
		{dev1, "kf/d/dev-1/down", read, true},
		{dev1, "kf/b/#", read, true},
		{dev1, "kf/b/delegation", read, true},
		{dev1, "kf/b/firmware", read, true},
		{dev1, "kf/b/a/b", read, true},
		{dev1, "kf/d/dev-2/down", read, false},
		{dev1, "kf/d/dev-10/down", read, false},
		{dev1, "kf/d/dev-1/up", read, false},
		{dev1, "kf/d/dev-2/up", read, false},
		{dev1, "kf/d/+/down", read, false},
		{dev1, "kf/d/+/up", read, false},
		{dev1, "kf/d/dev-1/#", read, false},
		{dev1, "kf/d/dev-1/+", read, false},
		{dev1, "kf/d/#", read, false},
		{dev1, "kf/#", read, false},
		{dev1, "kf/+/dev-1/down", read, false},
		{dev1, "#", read, false},
		{dev1, "+/d/dev-1/down", read, false},
		{dev1, "kf/b/+", read, false},
		{dev1, "kf/b/+/x", read, false},
		{dev1, "kf/b/x/#", read, false},
		{dev1, "kf/b/", read, false},
		{dev1, "kf/b", read, false},
		{dev1, "kf/bx/delegation", read, false},
		{dev1, "kf/d/dev-1/down/", read, false},
		{dev1, "$share/g/kf/d/dev-1/down", read, false},
		{dev1, "$share/fleetd/kf/d/+/up", read, false},
		{dev1, "$SYS/#", read, false},
		{dev1, "acme/d/dev-1/down", read, false},
		{dev1, "acme/b/delegation", read, false},
		{dev2, "kf/d/dev-2/down", read, true},
		{dev2, "kf/d/dev-1/down", read, false},
	})
}

func TestAllowedServer(t *testing.T) {
	runACL(t, protocol.Topics{}, []aclCase{
		{fleetd, "$share/fleetd/kf/d/+/up", read, true},
		{fleetd, "$share/fleetd/kf/d/+/up", write, false},
		{fleetd, "$share/other/kf/d/+/up", read, false},
		{fleetd, "$share/fleetd/kf/#", read, false},
		{fleetd, "kf/d/dev-1/down", write, true},
		{fleetd, "kf/d/dev-2/down", write, true},
		{fleetd, "kf/b/delegation", write, true},
		{fleetd, "kf/b/firmware", write, true},
		{fleetd, "kf/d/dev-1/up", read, true},
		{fleetd, "kf/d/+/up", read, true},
		{fleetd, "kf/b/#", read, true},
		{fleetd, "kf/anything/at/all", write, true},
		{fleetd, "kf", write, false},
		{fleetd, "kf", read, false},
		{fleetd, "kfx/d/dev-1/down", write, false},
		{fleetd, "kf-other/b/delegation", write, false},
		{fleetd, "acme/d/dev-1/down", write, false},
		{fleetd, "/kf/d/dev-1/down", write, false},
		{fleetd, "#", read, false},
		{fleetd, "+/d/+/up", read, false},
		{fleetd, "$SYS/#", read, false},
		{fleetd, "$SYS/broker/load", write, false},
		{fleetd, "other/topic", write, false},
		{fleetd, "", write, false},
		{fleetd, "", read, false},
	})
}

func TestAllowedOtherRoles(t *testing.T) {
	var cases []aclCase
	for _, id := range []identity.Identity{admin, nobody, zero} {
		for _, topic := range []string{
			"kf/d/dev-1/up", "kf/d/dev-1/down", "kf/d/alice/up", "kf/d/alice/down",
			"kf/b/#", "kf/b/delegation", "kf/#", "#", "$share/fleetd/kf/d/+/up", "",
		} {
			cases = append(cases, aclCase{id, topic, read, false}, aclCase{id, topic, write, false})
		}
	}
	runACL(t, protocol.Topics{}, cases)
}

func TestAllowedCustomPrefix(t *testing.T) {
	acme := protocol.Topics{Prefix: "acme"}
	runACL(t, acme, []aclCase{
		{dev1, "acme/d/dev-1/up", write, true},
		{dev1, "kf/d/dev-1/up", write, false},
		{dev1, "acme/d/dev-2/up", write, false},
		{dev1, "acme/d/dev-1/down", read, true},
		{dev1, "kf/d/dev-1/down", read, false},
		{dev1, "acme/d/dev-2/down", read, false},
		{dev1, "acme/b/#", read, true},
		{dev1, "acme/b/delegation", read, true},
		{dev1, "kf/b/#", read, false},
		{dev1, "kf/b/delegation", read, false},
		{dev1, "acme/b/+", read, false},
		{dev1, "acme/#", read, false},
		{fleetd, "$share/fleetd/acme/d/+/up", read, true},
		{fleetd, "$share/fleetd/kf/d/+/up", read, false},
		{fleetd, "acme/d/dev-1/down", write, true},
		{fleetd, "acme/b/delegation", write, true},
		{fleetd, "kf/d/dev-1/down", write, false},
		{fleetd, "kf/b/delegation", write, false},
		{fleetd, "acmex/d/dev-1/down", write, false},
		{admin, "acme/d/dev-1/up", read, false},
	})
}

// TestAllowedMatchesTopics ties the table to protocol.Topics: whatever the
// topic builders produce for a device is what the ACL lets that device use,
// for several prefixes.
func TestAllowedMatchesTopics(t *testing.T) {
	for _, tp := range []protocol.Topics{{}, {Prefix: "kf"}, {Prefix: "acme"}, {Prefix: "a/b"}} {
		t.Run(fmt.Sprintf("prefix %q", tp.Root()), func(t *testing.T) {
			runACL(t, tp, []aclCase{
				{dev1, tp.Up("dev-1"), write, true},
				{dev1, tp.Down("dev-1"), read, true},
				{dev1, tp.Broadcast(), read, true},
				{dev1, tp.Delegation(), read, true},
				{dev1, tp.BroadcastTopic("x"), read, true},
				{dev1, tp.Up("dev-2"), write, false},
				{dev1, tp.Down("dev-2"), read, false},
				{dev1, tp.Down("dev-1"), write, false},
				{dev1, tp.Up("dev-1"), read, false},
				{dev1, tp.SharedUp(broker.ServerShareGroup), read, false},
				{fleetd, tp.SharedUp(broker.ServerShareGroup), read, true},
				{fleetd, tp.Down("dev-1"), write, true},
				{fleetd, tp.Delegation(), write, true},
				{fleetd, tp.Up("dev-1"), read, true},
			})
		})
	}
}

// TestAllowedRestricted covers the sessions that are not full: an expired
// identity renewing reaches its own up and down topics only, and a birth
// credential its re-enrolment topics only.
func TestAllowedRestricted(t *testing.T) {
	renew, enroll := policy.AccessRenew, policy.AccessEnroll
	birth1 := identity.Identity{Role: identity.RoleIDevID, Name: "dev-1"}
	type restricted struct {
		id     identity.Identity
		topic  string
		write  bool
		want   bool
		access policy.Access
	}
	for _, tc := range []restricted{
		{dev1, "kf/d/dev-1/up", write, true, renew},
		{dev1, "kf/d/dev-1/down", read, true, renew},
		{dev1, "kf/b/#", read, false, renew},
		{dev1, "kf/b/anchors", read, false, renew},
		{dev1, "kf/d/dev-2/up", write, false, renew},
		{dev1, "kf/d/dev-1/reenroll", write, false, renew},
		{dev1, "kf/d/dev-1/up", write, false, enroll},
		{dev1, "kf/d/dev-1/down", read, false, policy.AccessExpired},
		{birth1, "kf/d/dev-1/reenroll", write, true, enroll},
		{birth1, "kf/d/dev-1/reenroll/down", read, true, enroll},
		{birth1, "kf/d/dev-1/up", write, false, enroll},
		{birth1, "kf/d/dev-1/down", read, false, enroll},
		{birth1, "kf/b/#", read, false, enroll},
		{birth1, "kf/d/dev-2/reenroll", write, false, enroll},
		{birth1, "kf/d/dev-2/reenroll/down", read, false, enroll},
		{birth1, "kf/d/dev-1/reenroll/#", read, false, enroll},
		{birth1, "kf/d/dev-1/reenroll", write, false, renew},
		{birth1, "kf/d/dev-1/reenroll", write, false, policy.AccessFull}, // full access is not a birth credential's
		{fleetd, "$share/fleetd/kf/d/+/reenroll", read, true, policy.AccessFull},
		{fleetd, "kf/d/dev-1/reenroll/down", write, true, policy.AccessFull},
	} {
		if got := broker.Allowed(protocol.Topics{}, tc.id, tc.access, tc.topic, tc.write); got != tc.want {
			t.Errorf("Allowed(%v, %v, %q, write=%v): got %v, want %v", tc.id, tc.access, tc.topic, tc.write, got, tc.want)
		}
	}
}
