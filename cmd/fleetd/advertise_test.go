package main

import (
	"strings"
	"testing"
)

func TestCheckAdvertise(t *testing.T) {
	for _, tc := range []struct {
		in, wantErr string
	}{
		{"", ""},
		{"mqtt.example.com:8883", ""},
		{"n1.example.com:8883,n2.example.com:8883, 10.0.0.3:8883", ""},
		{"[::1]:8883,n2:8883", ""},
		{"n1.example.com", `"n1.example.com": want HOST:PORT`},
		{"n1:8883,,n2:8883", `"": want HOST:PORT`},
		{"n1:8883;n2:8883", "want HOST:PORT"},
		{":8883", `":8883"`},
	} {
		err := checkAdvertise(tc.in)
		if (err == nil) != (tc.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("checkAdvertise(%q) = %v, want %q", tc.in, err, tc.wantErr)
		}
	}
}
