package device

import (
	"crypto/x509/pkix"
	"net/url"
)

type urlURL = url.URL

func pkixName(cn string) pkix.Name { return pkix.Name{CommonName: cn} }
