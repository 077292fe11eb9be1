package certs

import (
	"crypto/rand"
	"math/big"
	"net/url"
)

// urlURL lets the certificate templates name url.URL without issuer.go
// importing net/url beside its identity URIs.
type urlURL = url.URL

func cryptoRandInt(max *big.Int) (*big.Int, error) { return rand.Int(rand.Reader, max) }
