package adminapi

import "time"

// Paths for external brokers.
const (
	// PathBrokerCert issues the TLS certificate of an external broker.
	PathBrokerCert = "/v1/broker/cert"
	// PathBrokerAuthn and PathBrokerAuthz answer a broker's HTTP
	// authentication and authorization requests (EMQX 5's format). Besides
	// operators, the broker's own certificate (fleetctl broker cert) is
	// admitted to these two, and only these.
	PathBrokerAuthn = "/v1/broker/authn"
	PathBrokerAuthz = "/v1/broker/authz"
)

// BrokerCertRequest asks for a broker's TLS certificate. The broker's key
// is made where the broker runs (fleetctl broker cert) and only its CSR
// travels; the CA key that signs stays in fleetd's HSM.
type BrokerCertRequest struct {
	// CSR is the DER certificate request; its signature proves the key.
	CSR []byte `json:"csr"`
	// Names are the DNS names and IP addresses devices reach the broker
	// by; at least one.
	Names []string `json:"names"`
}

// BrokerCertResponse is the issued certificate and what the broker
// verifies devices with.
type BrokerCertResponse struct {
	// Certificate is the PEM chain: the leaf under the current root, then
	// the cross certificates back to the first root, so that devices
	// holding any root of the chain accept it.
	Certificate []byte `json:"certificate"`
	// CA is every root of the anchor chain, PEM: the broker's cafile, so
	// that it accepts device certificates issued under any of them.
	CA       []byte    `json:"ca"`
	NotAfter time.Time `json:"not_after"`
}
