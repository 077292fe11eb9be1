package mosquitto

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"text/template"

	"github.com/keyfleet/keyfleet/protocol"
)

// Scheme marks an external broker fleetd manages: --external-broker
// mosquitto://HOST:PORT. A plain HOST:PORT is a broker fleetd only
// connects to (its operator enforces the rules, or it asks fleetd's HTTP
// hooks).
const Scheme = "mosquitto://"

// DefaultPlugin is where Debian and Ubuntu install the dynamic-security
// plugin of Mosquitto 2.0.
const DefaultPlugin = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"

// ServerUser is the user name fleetd's MQTT session has at Mosquitto: the
// common name of fleetd's certificate.
const ServerUser = "fleetd"

// serverRole, deviceRolePrefix and birthRolePrefix name the dynsec roles
// fleetd manages.
const (
	serverRole       = "keyfleet-server"
	deviceRolePrefix = "keyfleet-device-"
	birthRolePrefix  = "keyfleet-birth-"
)

// BirthUser is the user name a device's birth credential has at
// Mosquitto: on the birth listener (ConfigOptions.BirthListen), which
// takes the certificate's whole subject as the user name
// (use_subject_as_username), "CN=" and the device id. A birth
// certificate names the device as its identities do, so on the device
// listener (use_identity_as_username: the bare CN) the plugin could not
// tell them apart; the two listeners trust different CAs, so each user
// name comes from one kind of certificate only. Device ids have no
// character RFC 2253 escapes.
func BirthUser(device string) string { return "CN=" + device }

// MaxPacketSize bounds every MQTT packet at the broker, as the embedded
// broker does: the largest keyfleet message (a certificate delivery with
// its chain) fits with room to spare; anything bigger is refused.
const MaxPacketSize = 4352

// ConfigOptions are the paths and addresses of a Mosquitto configuration.
type ConfigOptions struct {
	// Listen is host:port of the TLS listener; default 0.0.0.0:8883.
	Listen string
	// CAFile holds the fleet's CA certificates (fleetd's pki/ca.pem).
	CAFile string
	// CertFile and KeyFile are the broker's TLS certificate and key.
	CertFile, KeyFile string
	// CRLFile, if set, is a PEM CRL Mosquitto checks client certificates
	// against (re-read when Mosquitto reloads).
	CRLFile string
	// BirthListen, if set (host:port), is a second listener for birth
	// credentials (re-enrolment): it trusts BirthCAFile only and names
	// clients BirthUser, whom the plugin allows the re-enrolment topics.
	BirthListen, BirthCAFile string
	// Plugin is the dynamic-security plugin; default DefaultPlugin.
	Plugin string
	// DynsecFile is the plugin's state (SeedFile writes its first version);
	// Mosquitto must be able to write it.
	DynsecFile string
	// User, if set, is the system user Mosquitto runs as.
	User string
}

var confTemplate = template.Must(template.New("mosquitto.conf").Parse(`# Mosquitto 2.0 for keyfleet: written by ` + "`fleetctl broker config mosquitto`" + `.
# Devices authenticate with their certificate (CN = device id = user name);
# the dynamic-security plugin, managed by fleetd, holds each device's ACL.
{{- if .User}}
user {{.User}}
{{- end}}
per_listener_settings false
allow_anonymous false
persistence false
# A retained uplink would be handed to every later subscriber: refused
# (Mosquitto disconnects the client). fleetd publishes without the flag.
retain_available false
max_packet_size {{.MaxPacketSize}}
max_inflight_messages 1000
max_queued_messages 10000
plugin {{.Plugin}}
plugin_opt_config_file {{.DynsecFile}}

listener {{.Port}}{{if .Host}} {{.Host}}{{end}}
cafile {{.CAFile}}
certfile {{.CertFile}}
keyfile {{.KeyFile}}
{{- if .CRLFile}}
crlfile {{.CRLFile}}
{{- end}}
require_certificate true
use_identity_as_username true
tls_version tlsv1.2
{{- if .BirthListen}}

# Birth credentials (re-enrolment only): their own CA, user name "CN=<id>".
listener {{.BirthPort}}{{if .BirthHost}} {{.BirthHost}}{{end}}
cafile {{.BirthCAFile}}
certfile {{.CertFile}}
keyfile {{.KeyFile}}
require_certificate true
use_subject_as_username true
tls_version tlsv1.2
{{- end}}
log_dest stderr
log_type error
log_type warning
`))

// Config renders mosquitto.conf.
func Config(o ConfigOptions) (string, error) {
	if o.CAFile == "" || o.CertFile == "" || o.KeyFile == "" || o.DynsecFile == "" {
		return "", fmt.Errorf("mosquitto: CA, certificate, key and dynamic-security files are required")
	}
	host, port, err := net.SplitHostPort(cmp.Or(o.Listen, "0.0.0.0:8883"))
	if err != nil {
		return "", fmt.Errorf("mosquitto: listen address %q: %w", o.Listen, err)
	}
	var bhost, bport string
	if o.BirthListen != "" {
		if bhost, bport, err = net.SplitHostPort(o.BirthListen); err != nil {
			return "", fmt.Errorf("mosquitto: birth listen address %q: %w", o.BirthListen, err)
		}
		if o.BirthCAFile == "" {
			return "", fmt.Errorf("mosquitto: the birth listener needs the birth CA file")
		}
	}
	for _, s := range []string{o.CAFile, o.CertFile, o.KeyFile, o.CRLFile, o.Plugin, o.DynsecFile, o.User, host, port, bhost, bport, o.BirthCAFile} {
		if strings.ContainsAny(s, "\n\r") {
			return "", fmt.Errorf("mosquitto: %q: line breaks are not allowed", s)
		}
	}
	var b bytes.Buffer
	err = confTemplate.Execute(&b, struct {
		ConfigOptions
		Host, Port, BirthHost, BirthPort string
		MaxPacketSize                    int
	}{ConfigOptions: withPlugin(o), Host: host, Port: port, BirthHost: bhost, BirthPort: bport, MaxPacketSize: MaxPacketSize})
	return b.String(), err
}

func withPlugin(o ConfigOptions) ConfigOptions {
	o.Plugin = cmp.Or(o.Plugin, DefaultPlugin)
	return o
}

// acl is one dynsec ACL entry.
type acl struct {
	Type  string `json:"acltype"`
	Topic string `json:"topic"`
	Allow bool   `json:"allow"`
	// Priority is left at 0: every entry allows, and anything unlisted
	// is denied by defaultACLAccess.
}

// serverACLs: fleetd reads and writes the protocol's topics (its shared
// subscriptions are checked as the plain filter) and drives the plugin.
func serverACLs(t protocol.Topics) []acl {
	all := t.Root() + "/#"
	ctl := "$CONTROL/dynamic-security/#"
	return []acl{
		{"publishClientSend", all, true}, {"publishClientReceive", all, true},
		{"subscribePattern", all, true}, {"unsubscribePattern", all, true},
		{"subscribePattern", "$share/+/" + all, true}, {"unsubscribePattern", "$share/+/" + all, true},
		{"publishClientSend", ctl, true}, {"publishClientReceive", ctl, true},
		{"subscribePattern", ctl, true}, {"unsubscribePattern", ctl, true},
	}
}

// deviceACLs is broker.Allowed for a device with full access, written as
// dynsec entries: its up and re-enrolment topics to write, its down and
// re-enrolment answer topics and the broadcasts to read.
func deviceACLs(t protocol.Topics, device string) []acl {
	var out []acl
	for _, w := range []string{t.Up(device), t.Reenroll(device)} {
		out = append(out, acl{"publishClientSend", w, true})
	}
	for _, r := range []string{t.Down(device), t.ReenrollDown(device)} {
		out = append(out, acl{"subscribeLiteral", r, true}, acl{"publishClientReceive", r, true})
	}
	return append(out, acl{"subscribePattern", t.Broadcast(), true}, acl{"publishClientReceive", t.Broadcast(), true})
}

// SeedFile is the dynamic-security plugin's first state: fleetd's user
// name with the role to manage it and to carry the protocol, no device
// yet (fleetd adds them when it connects), and everything else denied.
func SeedFile(t protocol.Topics) ([]byte, error) {
	type roleRef struct {
		Name string `json:"rolename"`
	}
	seed := map[string]any{
		"clients": []map[string]any{{"username": ServerUser, "textName": "fleetd", "roles": []roleRef{{serverRole}}}},
		"roles":   []map[string]any{{"rolename": serverRole, "acls": serverACLs(t)}},
		"defaultACLAccess": map[string]bool{
			"publishClientSend": false, "publishClientReceive": false, "subscribe": false, "unsubscribe": true,
		},
	}
	b, err := json.MarshalIndent(seed, "", "\t")
	if err != nil {
		return nil, fmt.Errorf("mosquitto: seed: %w", err)
	}
	return append(b, '\n'), nil
}

// birthACLs is broker.Allowed for a birth credential, written as dynsec
// entries: the device's re-enrolment topic to write, its answer topic to
// read, nothing else.
func birthACLs(t protocol.Topics, device string) []acl {
	r := t.ReenrollDown(device)
	return []acl{{"publishClientSend", t.Reenroll(device), true},
		{"subscribeLiteral", r, true}, {"publishClientReceive", r, true}}
}

// Commands are the dynamic-security commands that bring one device in step:
// its role and client made, and with birth (it has a birth credential) its
// birth role and client (BirthUser); or, revoked, all of them deleted
// (Mosquitto then drops every session with those user names).
func Commands(t protocol.Topics, device string, revoked, birth bool) []map[string]any {
	role, brole := deviceRolePrefix+device, birthRolePrefix+device
	if revoked {
		return []map[string]any{
			{"command": "deleteClient", "username": device},
			{"command": "deleteRole", "rolename": role},
			{"command": "deleteClient", "username": BirthUser(device)},
			{"command": "deleteRole", "rolename": brole},
		}
	}
	out := []map[string]any{
		{"command": "createRole", "rolename": role, "acls": deviceACLs(t, device)},
		{"command": "createClient", "username": device, "roles": []map[string]any{{"rolename": role}}},
	}
	if birth {
		out = append(out, map[string]any{"command": "createRole", "rolename": brole, "acls": birthACLs(t, device)},
			map[string]any{"command": "createClient", "username": BirthUser(device), "roles": []map[string]any{{"rolename": brole}}})
	}
	return out
}
