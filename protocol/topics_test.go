package protocol

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestTopicNames(t *testing.T) {
	def, custom := Topics{}, Topics{Prefix: "acme"}
	tests := []struct {
		name string
		got  string
		want string
	}{
		{"Up", def.Up("dev-1"), "kf/d/dev-1/up"},
		{"Down", def.Down("dev-1"), "kf/d/dev-1/down"},
		{"SharedUp", def.SharedUp("fleetd"), "$share/fleetd/kf/d/+/up"},
		{"Broadcast", def.Broadcast(), "kf/b/#"},
		{"BroadcastTopic", def.BroadcastTopic("anchors"), "kf/b/anchors"},
		{"Delegation", def.Delegation(), "kf/b/delegation"},
		{"custom Up", custom.Up("dev-1"), "acme/d/dev-1/up"},
		{"custom Down", custom.Down("dev-1"), "acme/d/dev-1/down"},
		{"custom SharedUp", custom.SharedUp("g"), "$share/g/acme/d/+/up"},
		{"custom Delegation", custom.Delegation(), "acme/b/delegation"},
		{"Root", def.Root(), "kf"},
		{"custom Root", custom.Root(), "acme"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Errorf("got %q, want %q", tt.got, tt.want)
			}
		})
	}
}

func TestParseTopics(t *testing.T) {
	def, custom := Topics{}, Topics{Prefix: "acme"}
	tests := []struct {
		name    string
		topics  Topics
		parse   func(Topics, string) (string, error)
		topic   string
		want    string
		wantErr error // nil with an empty want: some error
	}{
		{"up", def, Topics.ParseUp, "kf/d/dev-1/up", "dev-1", nil},
		{"down", def, Topics.ParseDown, "kf/d/dev-1/down", "dev-1", nil},
		{"custom up", custom, Topics.ParseUp, "acme/d/dev.1_A/up", "dev.1_A", nil},
		{"up built by Up", def, Topics.ParseUp, def.Up("sensor-42"), "sensor-42", nil},
		{"down built by Down", custom, Topics.ParseDown, custom.Down("sensor-42"), "sensor-42", nil},
		{"down is not up", def, Topics.ParseUp, "kf/d/dev-1/down", "", nil},
		{"up is not down", def, Topics.ParseDown, "kf/d/dev-1/up", "", nil},
		{"other prefix", def, Topics.ParseUp, "acme/d/dev-1/up", "", nil},
		{"default prefix under custom", custom, Topics.ParseUp, "kf/d/dev-1/up", "", nil},
		{"broadcast", def, Topics.ParseUp, "kf/b/anchors", "", nil},
		{"extra level", def, Topics.ParseUp, "kf/d/dev-1/up/x", "", nil},
		{"device with slash", def, Topics.ParseUp, "kf/d/a/b/up", "", nil},
		{"missing level", def, Topics.ParseUp, "kf/d/up", "", nil},
		{"wildcard +", def, Topics.ParseUp, "kf/d/+/up", "", ErrBadDeviceID},
		{"wildcard #", def, Topics.ParseDown, "kf/d/#/down", "", ErrBadDeviceID},
		{"empty device", def, Topics.ParseUp, "kf/d//up", "", ErrBadDeviceID},
		{"dot device", def, Topics.ParseUp, "kf/d/.hidden/up", "", ErrBadDeviceID},
		{"shared subscription is no topic", def, Topics.ParseUp, def.SharedUp("fleetd"), "", nil},
		{"empty", def, Topics.ParseUp, "", "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.parse(tt.topics, tt.topic)
			if tt.want != "" {
				if err != nil || got != tt.want {
					t.Errorf("parse(%q) = %q, %v, want %q, nil", tt.topic, got, err, tt.want)
				}
				return
			}
			if err == nil {
				t.Errorf("parse(%q) = %q, nil, want an error", tt.topic, got)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("parse(%q): got err %v, want %v", tt.topic, err, tt.wantErr)
			}
		})
	}
}

func TestValidateDeviceID(t *testing.T) {
	tests := []struct {
		id string
		ok bool
	}{
		{"dev-1", true},
		{"a", true},
		{"A.b_c-9", true},
		{"x.", true},
		{"0", true},
		{strings.Repeat("d", MaxDeviceIDLen), true},
		{"", false},
		{"a/b", false},
		{"+", false},
		{"#", false},
		{"dev+1", false},
		{strings.Repeat("d", MaxDeviceIDLen+1), false},
		{".x", false},
		{".", false},
		{"dev 1", false},
		{"dev\x00", false},
		{"dév", false},
		{"$SYS", false},
		{"a:b", false},
	}
	for _, tt := range tests {
		name := tt.id
		if len(name) > 20 {
			name = fmt.Sprintf("%d chars", len(tt.id))
		}
		t.Run(name, func(t *testing.T) {
			err := ValidateDeviceID(tt.id)
			switch {
			case tt.ok && err != nil:
				t.Errorf("ValidateDeviceID(%q): got err %v, want nil", tt.id, err)
			case !tt.ok && !errors.Is(err, ErrBadDeviceID):
				t.Errorf("ValidateDeviceID(%q): got err %v, want %v", tt.id, err, ErrBadDeviceID)
			}
		})
	}
}
