package datakey_test

import (
	"fmt"

	"github.com/keyfleet/keyfleet/datakey"
)

// A device's keyset through two rotations and a retention policy that
// keeps one old version.
func ExampleKeyset() {
	var ks datakey.Keyset
	// Keys arrive from the server (protocol.OpenEncrypt0); fixed here.
	k1, k2, k3 := make([]byte, 16), make([]byte, 16), make([]byte, 32)
	k2[0], k3[0] = 2, 3

	_ = ks.Rotate(1, k1)
	old, _ := ks.Encrypt([]byte("reading 1"), []byte("sensor.log"))
	_ = ks.Rotate(2, k2)
	_ = ks.Rotate(3, k3)
	fmt.Println(ks.RetireBeyond(1)) // keep one DecryptOnly version
	fmt.Println(ks.String())

	_, err := ks.Decrypt(old, []byte("sensor.log"))
	fmt.Println(err)
	v, _ := datakey.VersionOf(old)
	pt, _ := datakey.Decrypt(k1, v, old, []byte("sensor.log")) // the operator, with version 1 recovered from escrow
	fmt.Printf("%s\n", pt)
	// Output:
	// [1]
	// datakey.Keyset{primary: 3, versions: 1:retired 2:decrypt-only 3:primary}
	// datakey: key version retired: version 1
	// reading 1
}
