package datakey

import (
	"crypto/subtle"
	"fmt"
	"log/slog"
	"strings"
)

// Keyset is a device's data keys: versions, each with key material and a
// Status, exactly one of them Primary once the keyset is not empty.
//
// The zero value is an empty keyset, ready for Add or Rotate. Status
// changes go only through the methods below, which refuse the moves the
// life cycle (see Status) does not allow and leave the keyset unchanged
// when they fail. Repeating a change that already happened (a duplicate
// delivery, a replayed command) succeeds without effect, so that callers
// can apply the server's steps idempotently.
//
// A Keyset is not safe for concurrent use; hand readers a Clone.
// Printing or logging it shows versions and statuses, never key bytes.
type Keyset struct {
	versions []entry // ascending by version, no duplicates
}

// entry is one key version.
type entry struct {
	version uint32
	status  Status
	key     secret // empty unless status.hasKey()
}

// retire moves a DecryptOnly entry to Retired and wipes its key.
func (e *entry) retire() {
	e.status = Retired
	e.key.wipe()
}

// VersionInfo describes one version of a keyset, without its key: what a
// device reports and what an operator lists.
type VersionInfo struct {
	Version uint32 `json:"version"`
	Status  Status `json:"status"`
}

// find returns the index of version v, or -1.
func (ks *Keyset) find(v uint32) int {
	for i := range ks.versions {
		if ks.versions[i].version == v {
			return i
		}
	}
	return -1
}

// primary returns the index of the primary version, or -1 when empty.
func (ks *Keyset) primary() int {
	for i := range ks.versions {
		if ks.versions[i].status == Primary {
			return i
		}
	}
	return -1
}

// latest returns the highest version the keyset has ever held, or 0.
func (ks *Keyset) latest() uint32 {
	if len(ks.versions) == 0 {
		return 0
	}
	return ks.versions[len(ks.versions)-1].version
}

func checkKey(v uint32, key []byte) error {
	if v == 0 {
		return ErrInvalidVersion
	}
	if len(key) != 16 && len(key) != 32 {
		return fmt.Errorf("%w: version %d has %d bytes", ErrKeySize, v, len(key))
	}
	return nil
}

// Add stores key as version v, DecryptOnly, so that the device can read
// data written under v before anyone is told to write with it (promote it
// with SetPrimary). The first version of an empty keyset becomes Primary
// at once, since a keyset that cannot encrypt is of no use.
//
// v must be above every version the keyset has held, retired ones
// included, so that a version number always names one key. Adding the
// version again with the same key is a no-op, so a redelivered key message
// is harmless; the same version with another key is refused. Add copies
// key.
func (ks *Keyset) Add(v uint32, key []byte) error {
	if err := checkKey(v, key); err != nil {
		return err
	}
	if i := ks.find(v); i >= 0 {
		e := &ks.versions[i]
		if e.status.hasKey() && subtle.ConstantTimeCompare(e.key.bytes(), key) == 1 {
			return nil
		}
		return fmt.Errorf("%w: add %d: it exists (%v) with another key", ErrVersionNotNewer, v, e.status)
	}
	if latest := ks.latest(); v < latest {
		return fmt.Errorf("%w: add %d: latest is %d", ErrVersionNotNewer, v, latest)
	}
	status := DecryptOnly
	if len(ks.versions) == 0 {
		status = Primary
	}
	ks.versions = append(ks.versions, entry{version: v, status: status, key: newSecret(key)})
	return nil
}

// Rotate adds key as version v and makes it the primary in one step: the
// usual rotation, where the previous primary becomes DecryptOnly. Repeating
// the rotation that made v primary is a no-op, but a stale one (v exists
// and is no longer primary) is refused with ErrVersionNotNewer, so that a
// replayed message cannot roll the keyset back; SetPrimary does that on
// purpose.
func (ks *Keyset) Rotate(v uint32, key []byte) error {
	if i := ks.find(v); i >= 0 && ks.versions[i].status != Primary {
		return fmt.Errorf("%w: rotate to %d: it exists (%v)", ErrVersionNotNewer, v, ks.versions[i].status)
	}
	if err := ks.Add(v, key); err != nil {
		return err
	}
	return ks.SetPrimary(v)
}

// SetPrimary makes version v the one Encrypt uses; the previous primary
// becomes DecryptOnly. v must be Primary already (no-op) or DecryptOnly;
// promoting an older version is allowed, as that is how a rotation is
// rolled back. Retired and Destroyed versions have no key and cannot be
// promoted.
func (ks *Keyset) SetPrimary(v uint32) error {
	i := ks.find(v)
	if i < 0 {
		return fmt.Errorf("%w: set primary %d", ErrUnknownVersion, v)
	}
	switch st := ks.versions[i].status; st {
	case Primary:
		return nil
	case DecryptOnly:
	default:
		return fmt.Errorf("%w: set primary %d: version is %v", ErrIllegalTransition, v, st)
	}
	if p := ks.primary(); p >= 0 {
		ks.versions[p].status = DecryptOnly
	}
	ks.versions[i].status = Primary
	return nil
}

// Retire marks DecryptOnly version v Retired and wipes its key: the
// device stops reading data written under it (Decrypt returns ErrRetired),
// and only the server's escrow can still decrypt that data. The primary
// cannot be retired (ErrRetirePrimary): promote another version first.
// Retiring a Retired version is a no-op; a Destroyed one, an error.
func (ks *Keyset) Retire(v uint32) error {
	i := ks.find(v)
	if i < 0 {
		return fmt.Errorf("%w: retire %d", ErrUnknownVersion, v)
	}
	e := &ks.versions[i]
	switch e.status {
	case Primary:
		return fmt.Errorf("%w: version %d", ErrRetirePrimary, v)
	case DecryptOnly:
		e.retire()
		return nil
	case Retired:
		return nil
	default:
		return fmt.Errorf("%w: retire %d: version is %v", ErrIllegalTransition, v, e.status)
	}
}

// RetireBeyond applies the retention policy "keep at most keep DecryptOnly
// versions": it retires the oldest DecryptOnly versions beyond that count
// and returns them, oldest first. The primary is never counted or retired.
// A negative keep counts as 0.
func (ks *Keyset) RetireBeyond(keep int) []uint32 {
	n := 0
	for _, e := range ks.versions {
		if e.status == DecryptOnly {
			n++
		}
	}
	var retired []uint32
	for i := range ks.versions {
		if n <= max(keep, 0) {
			break
		}
		if e := &ks.versions[i]; e.status == DecryptOnly {
			e.retire()
			retired = append(retired, e.version)
			n--
		}
	}
	return retired
}

// Destroy marks Retired version v Destroyed: the escrow copy is gone and
// Decrypt says so (ErrDestroyed) instead of ErrRetired. The server calls
// it once the escrow is wiped, after a delay that leaves operators time to
// recover data; the device has nothing left to delete. Only Retired
// versions can be destroyed; destroying a Destroyed version is a no-op.
func (ks *Keyset) Destroy(v uint32) error {
	i := ks.find(v)
	if i < 0 {
		return fmt.Errorf("%w: destroy %d", ErrUnknownVersion, v)
	}
	e := &ks.versions[i]
	switch e.status {
	case Retired:
		e.status = Destroyed
		return nil
	case Destroyed:
		return nil
	default:
		return fmt.Errorf("%w: destroy %d: version is %v, retire it first", ErrIllegalTransition, v, e.status)
	}
}

// Versions lists every version with its status, oldest first, including
// the Retired and Destroyed ones, for reports and policy decisions.
func (ks *Keyset) Versions() []VersionInfo {
	out := make([]VersionInfo, len(ks.versions))
	for i, e := range ks.versions {
		out[i] = VersionInfo{Version: e.version, Status: e.status}
	}
	return out
}

// PrimaryVersion returns the version Encrypt uses, or 0 for an empty keyset.
func (ks *Keyset) PrimaryVersion() uint32 {
	if p := ks.primary(); p >= 0 {
		return ks.versions[p].version
	}
	return 0
}

// Clone returns an independent copy, key material included: a snapshot
// for readers while the original keeps changing.
func (ks *Keyset) Clone() *Keyset {
	c := &Keyset{versions: make([]entry, len(ks.versions))}
	for i, e := range ks.versions {
		c.versions[i] = entry{version: e.version, status: e.status, key: newSecret(e.key.bytes())}
	}
	return c
}

// The methods below use value receivers so that a Keyset printed by value
// (fmt.Printf("%v", *ks)) is as safe as one printed through a pointer: fmt
// would otherwise walk the unexported fields and print the key bytes.

// String summarizes the keyset without key material, e.g.
// "datakey.Keyset{primary: 3, versions: 1:retired 2:decrypt-only 3:primary}".
func (ks Keyset) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "datakey.Keyset{primary: %d, versions:", ks.PrimaryVersion())
	for _, e := range ks.versions {
		fmt.Fprintf(&b, " %d:%v", e.version, e.status)
	}
	b.WriteString("}")
	return b.String()
}

// GoString is String: %#v must not show key bytes either.
func (ks Keyset) GoString() string { return ks.String() }

// Format prints String for every verb, so that no verb (%v, %+v, %#v,
// %x, %d, ...) reaches the key bytes.
func (ks Keyset) Format(f fmt.State, _ rune) { fmt.Fprint(f, ks.String()) }

// LogValue logs the primary version and the versions with their statuses.
func (ks Keyset) LogValue() slog.Value {
	versions := make([]string, len(ks.versions))
	for i, e := range ks.versions {
		versions[i] = fmt.Sprintf("%d:%v", e.version, e.status)
	}
	return slog.GroupValue(
		slog.Uint64("primary", uint64(ks.PrimaryVersion())),
		slog.String("versions", strings.Join(versions, " ")),
	)
}
