package device

import "crypto/x509/pkix"

func pkixName(cn string) pkix.Name { return pkix.Name{CommonName: cn} }
