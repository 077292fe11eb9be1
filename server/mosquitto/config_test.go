package mosquitto

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/keyfleet/keyfleet/protocol"
)

func TestConfig(t *testing.T) {
	full := ConfigOptions{Listen: "10.0.0.5:8883", CAFile: "/etc/kf/ca.pem", CertFile: "/etc/kf/broker.pem",
		KeyFile: "/etc/kf/broker.key", DynsecFile: "/var/lib/mosquitto/dynsec.json", CRLFile: "/etc/kf/crl.pem"}
	tests := []struct {
		name    string
		opts    ConfigOptions
		want    []string // lines that must be present
		absent  []string
		wantErr string
	}{
		{name: "full", opts: full, want: []string{
			"listener 8883 10.0.0.5", "cafile /etc/kf/ca.pem", "certfile /etc/kf/broker.pem", "keyfile /etc/kf/broker.key",
			"crlfile /etc/kf/crl.pem", "require_certificate true", "use_identity_as_username true", "allow_anonymous false",
			"retain_available false", "max_packet_size 4352", "plugin " + DefaultPlugin,
			"plugin_opt_config_file /var/lib/mosquitto/dynsec.json",
		}, absent: []string{"user ", "use_subject_as_username"}},
		{name: "user, no CRL, default listener", opts: func() ConfigOptions {
			o := full
			o.Listen, o.CRLFile, o.User = "", "", "mosquitto"
			return o
		}(), want: []string{"listener 8883 0.0.0.0", "user mosquitto"}, absent: []string{"crlfile"}},
		{name: "birth listener", opts: func() ConfigOptions {
			o := full
			o.BirthListen, o.BirthCAFile = "10.0.0.5:8884", "/etc/kf/birth-ca.pem"
			return o
		}(), want: []string{"listener 8884 10.0.0.5", "cafile /etc/kf/birth-ca.pem", "use_subject_as_username true"}},
		{name: "birth listener without its CA", opts: func() ConfigOptions { o := full; o.BirthListen = "0.0.0.0:8884"; return o }(), wantErr: "birth CA"},
		{name: "missing CA", opts: ConfigOptions{CertFile: "c", KeyFile: "k", DynsecFile: "d"}, wantErr: "required"},
		{name: "bad listen", opts: func() ConfigOptions { o := full; o.Listen = "8883"; return o }(), wantErr: "listen address"},
		{name: "line break smuggles a directive", opts: func() ConfigOptions { o := full; o.CAFile = "/x\nallow_anonymous true"; return o }(), wantErr: "line breaks"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Config(tt.opts)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			lines := map[string]bool{}
			for _, l := range strings.Split(got, "\n") {
				lines[l] = true
			}
			for _, w := range tt.want {
				if !lines[w] {
					t.Errorf("no line %q in:\n%s", w, got)
				}
			}
			for _, a := range tt.absent {
				if strings.Contains(got, "\n"+a) {
					t.Errorf("unexpected %q in:\n%s", a, got)
				}
			}
		})
	}
}

// The seed gives fleetd's user name the control topics and the protocol's,
// and denies everything else by default.
func TestSeedFile(t *testing.T) {
	b, err := SeedFile(protocol.Topics{Prefix: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	var seed struct {
		Clients []struct {
			Username string
			Roles    []struct{ Rolename string }
		}
		Roles []struct {
			Rolename string
			ACLs     []acl `json:"acls"`
		}
		DefaultACLAccess map[string]bool
	}
	if err := json.Unmarshal(b, &seed); err != nil {
		t.Fatal(err)
	}
	if len(seed.Clients) != 1 || seed.Clients[0].Username != ServerUser || seed.Clients[0].Roles[0].Rolename != serverRole {
		t.Fatalf("clients %+v", seed.Clients)
	}
	have := map[string]bool{}
	for _, a := range seed.Roles[0].ACLs {
		have[a.Type+" "+a.Topic] = a.Allow
	}
	for _, w := range []string{"publishClientSend $CONTROL/dynamic-security/#", "subscribePattern $CONTROL/dynamic-security/#",
		"subscribePattern $share/+/acme/#", "publishClientSend acme/#", "publishClientReceive acme/#"} {
		if !have[w] {
			t.Errorf("server role lacks %q", w)
		}
	}
	for k, v := range seed.DefaultACLAccess {
		if v != (k == "unsubscribe") {
			t.Errorf("defaultACLAccess %s = %v", k, v)
		}
	}
}

// A device's role is broker.Allowed for full access: its own topics only.
func TestDeviceCommands(t *testing.T) {
	var topics protocol.Topics
	add := Commands(topics, "dev-1", false, false)
	if len(add) != 2 || add[0]["command"] != "createRole" || add[1]["command"] != "createClient" || add[1]["username"] != "dev-1" {
		t.Fatalf("add: %v", add)
	}
	var got []string
	for _, a := range add[0]["acls"].([]acl) {
		got = append(got, a.Type+" "+a.Topic)
	}
	want := []string{"publishClientSend kf/d/dev-1/up", "publishClientSend kf/d/dev-1/reenroll",
		"subscribeLiteral kf/d/dev-1/down", "publishClientReceive kf/d/dev-1/down",
		"subscribeLiteral kf/d/dev-1/reenroll/down", "publishClientReceive kf/d/dev-1/reenroll/down",
		"subscribePattern kf/b/#", "publishClientReceive kf/b/#"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("acls\n got %v\nwant %v", got, want)
	}
	del := Commands(topics, "dev-1", true, true)
	if del[0]["command"] != "deleteClient" || del[0]["username"] != "dev-1" || del[1]["command"] != "deleteRole" ||
		del[2]["command"] != "deleteClient" || del[2]["username"] != "CN=dev-1" || del[3]["rolename"] != "keyfleet-birth-dev-1" {
		t.Errorf("revoke: %v", del)
	}
}

// A device with a birth credential also gets a client named as the birth
// listener names it, whose role is broker.Allowed for a birth credential:
// its re-enrolment topics only.
func TestBirthCommands(t *testing.T) {
	var topics protocol.Topics
	add := Commands(topics, "dev-1", false, true)
	if len(add) != 4 || add[2]["command"] != "createRole" || add[2]["rolename"] != "keyfleet-birth-dev-1" ||
		add[3]["command"] != "createClient" || add[3]["username"] != "CN=dev-1" {
		t.Fatalf("add: %v", add)
	}
	var got []string
	for _, a := range add[2]["acls"].([]acl) {
		got = append(got, a.Type+" "+a.Topic)
	}
	want := []string{"publishClientSend kf/d/dev-1/reenroll", "subscribeLiteral kf/d/dev-1/reenroll/down", "publishClientReceive kf/d/dev-1/reenroll/down"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("acls\n got %v\nwant %v", got, want)
	}
}
