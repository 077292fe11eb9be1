package protocol

import (
	"testing"
)

// Size budget of the sealed messages, from DESIGN.md. The broker's maximum
// packet size is MaxPacketSize; these keep the common messages far below.
const (
	maxEnrollSize    = 512 // enroll with a P-256 CSR
	maxActivatedSize = 200
	// maxRotationSize bounds one identity rotation's application payload
	// (rotate, enroll, cert, activated), which fleetsim reports as
	// bytes_per_rotation: at most 1,000 bytes, with room for DER
	// signatures, longer device ids and CA names.
	maxRotationSize = 960
)

// TestMessageSizes measures every message as it goes on the wire, with
// realistic content: a P-256 CSR with CN and URI SAN, a CA-issued P-256
// leaf, an 8-byte kid and an ES256 signature. Run with -v to see the table
// that docs/protocol.md quotes.
func TestMessageSizes(t *testing.T) {
	c := NewCodec()
	key := newKey(t)
	r := realisticMaterial(t)
	t.Logf("CSR %d bytes DER, leaf certificate %d bytes DER, online key SPKI %d bytes", len(r.csr), len(r.cert), len(r.onlineK))
	t.Logf("| message | payload (B) | on the wire (B) | envelope |")
	t.Logf("|---|---:|---:|---|")
	rotation := 0
	for _, m := range examples(t) {
		typ := TypeOf(m)
		t.Run(typ.String(), func(t *testing.T) {
			payload, err := c.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			packet := encode(t, c, m, key)
			envelope := "COSE_Sign1"
			if !Signed(typ) {
				envelope = "bare"
			}
			t.Logf("| %s | %d | %d | %s |", typ, len(payload), len(packet), envelope)
			switch typ {
			case TypeRotate, TypeEnroll, TypeCert, TypeActivated:
				rotation += len(packet)
			}
			if len(packet) > MaxPacketSize {
				t.Errorf("%v: %d bytes, want <= MaxPacketSize %d", typ, len(packet), MaxPacketSize)
			}
			switch typ {
			case TypeEnroll:
				if len(packet) > maxEnrollSize {
					t.Errorf("sealed enroll: %d bytes, want <= %d", len(packet), maxEnrollSize)
				}
			case TypeActivated:
				if len(packet) > maxActivatedSize {
					t.Errorf("sealed activated: %d bytes, want <= %d", len(packet), maxActivatedSize)
				}
			}
			if Signed(typ) {
				// tag (1) + array (1) + protected {alg, kid} (14) + unprotected {} (1)
				// + payload head (2 or 3) + signature (66).
				overhead := len(packet) - len(payload)
				if overhead < 84 || overhead > 86 {
					t.Errorf("COSE_Sign1 overhead %d bytes, want 84-86", overhead)
				}
			}
		})
	}
	t.Logf("one identity rotation (rotate, enroll, cert, activated): %d bytes", rotation)
	if rotation > maxRotationSize {
		t.Errorf("one identity rotation: %d bytes, want <= %d", rotation, maxRotationSize)
	}
}
