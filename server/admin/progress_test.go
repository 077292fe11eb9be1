package admin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/server/store"
)

// Rotation progress refuses empty and oversized requests, answers in
// request order, names a device it does not know, and says nothing of
// connections when fleetd has no view of them (no Sessions).
func TestRotationProgressRequests(t *testing.T) {
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "fleet.db"), store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	h := &handler{p: Parts{Devices: st}, log: slog.New(slog.DiscardHandler)}
	many := make([]adminapi.RotationRef, adminapi.MaxProgress+1)
	for i := range many {
		many[i] = adminapi.RotationRef{Device: fmt.Sprint("d", i), Version: 2}
	}
	for _, tc := range []struct {
		name     string
		body     string
		wantCode int
		want     string
	}{
		{"none", `{"rotations":[]}`, http.StatusBadRequest, "at least one"},
		{"too many", mustJSON(t, adminapi.ProgressRequest{Rotations: many}), http.StatusBadRequest, "at most 1000"},
		{"unknown field", `{"rotation":[]}`, http.StatusBadRequest, "unknown field"},
		{"unknown devices, in order", `{"rotations":[{"device":"a","version":2},{"device":"b","version":3}]}`, http.StatusOK,
			`{"rotations":[{"device":"a","version":2,"connected":null,"error":"device \"a\" not found"},{"device":"b","version":3,"connected":null,"error":"device \"b\" not found"}]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			h.rotationProgress(rec, httptest.NewRequest(http.MethodPost, adminapi.PathRotationsProgress, strings.NewReader(tc.body)))
			if rec.Code != tc.wantCode || !strings.Contains(rec.Body.String(), tc.want) {
				t.Errorf("got %d %s, want %d with %s", rec.Code, rec.Body.String(), tc.wantCode, tc.want)
			}
		})
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	var b bytes.Buffer
	if err := json.NewEncoder(&b).Encode(v); err != nil {
		t.Fatal(err)
	}
	return b.String()
}
