package admin

import (
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/escrow"
	"github.com/keyfleet/keyfleet/server/inventory"
	"github.com/keyfleet/keyfleet/server/release"
	"github.com/keyfleet/keyfleet/server/rotation"
	"github.com/keyfleet/keyfleet/server/store"
)

// TestStatusOf: every error a part returns on purpose maps to its HTTP
// status and API code, wrapped or not; anything else is internal.
func TestStatusOf(t *testing.T) {
	for _, tc := range []struct {
		err    error
		status int
		code   string
	}{
		{release.ErrInvalid, http.StatusBadRequest, adminapi.CodeInvalid},
		{escrow.ErrOperatorKey, http.StatusBadRequest, adminapi.CodeInvalid},
		{protocol.ErrBadDeviceID, http.StatusBadRequest, adminapi.CodeInvalid},
		{certs.ErrBadCSR, http.StatusBadRequest, adminapi.CodeInvalid},
		{certs.ErrCSRIdentity, http.StatusBadRequest, adminapi.CodeInvalid},
		{inventory.ErrInvalid, http.StatusBadRequest, adminapi.CodeInvalid},
		{escrow.ErrNoKey, http.StatusNotFound, adminapi.CodeNotFound},
		{store.ErrNotExist, http.StatusNotFound, adminapi.CodeNotFound},
		{store.ErrExists, http.StatusConflict, adminapi.CodeExists},
		{rotation.ErrRevoked, http.StatusConflict, adminapi.CodeRevoked},
		{fmt.Errorf("revoke: %w", &rotation.AlreadyRevokedError{Device: "d1"}), http.StatusConflict, adminapi.CodeAlreadyRevoked},
		{errors.New("disk on fire"), http.StatusInternalServerError, adminapi.CodeInternal},
	} {
		for _, err := range []error{tc.err, fmt.Errorf("context: %w", tc.err)} {
			if status, code := statusOf(err); status != tc.status || code != tc.code {
				t.Errorf("%v: got %d %q, want %d %q", err, status, code, tc.status, tc.code)
			}
		}
	}
}

// TestMessage: the store's sentinels are put in the operator's words;
// other errors pass as they are.
func TestMessage(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("device %q: %w", "ghost", store.ErrNotExist), `device "ghost" not found`},
		{fmt.Errorf("device %q: %w", "dev-1", store.ErrExists), `device "dev-1" already exists`},
		{store.ErrNotExist, store.ErrNotExist.Error()},
		{errors.New("rotation: device dev-1 is revoked"), "rotation: device dev-1 is revoked"},
	} {
		if got := message(tc.err); got != tc.want {
			t.Errorf("message(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}
