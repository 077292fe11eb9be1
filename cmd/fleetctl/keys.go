package main

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/adminapi/client"
	"github.com/keyfleet/keyfleet/protocol"
)

// keyCommands are the commands for the keys beyond a device's identity
// rotation: revoking a device's keys, the trust anchors, data keys and
// their escrow, and the firmware signing key's releases.
func (a *app) keyCommands() (top []*cobra.Command, device []*cobra.Command) {
	var reason string
	revoke := &cobra.Command{Use: "revoke ID --reason TEXT", Short: "revoke a device at once: sessions dropped, every credential refused",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if strings.TrimSpace(reason) == "" {
				return errors.New("--reason is required: it goes into the audit log")
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			r, err := c.Revoke(cmd.Context(), args[0], reason)
			if alreadyRevoked(err) {
				// Revoking is idempotent for the operator: the device is
				// refused either way, and a script may run this twice.
				_, err := fmt.Fprintf(a.out, "%s was already revoked\n", args[0])
				return err
			}
			if err != nil {
				return err
			}
			return a.print(r, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "device\t%s\nrevoked in\t%.1f ms\n", r.Device, r.TookMS)
			})
		}}
	revoke.Flags().StringVar(&reason, "reason", "", "why (recorded in the audit log)")

	anchorsCmd := &cobra.Command{Use: "anchors", Short: "the trust-anchor chain (CA root, update and firmware keys)"}
	showAnchors := &cobra.Command{Use: "show", Short: "the current anchor set", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			info, err := c.Anchors(cmd.Context())
			if err != nil {
				return err
			}
			return a.print(info, anchorsTable(info))
		}}
	var keys []string
	rotateAnchors := &cobra.Command{Use: "rotate", Short: "make the next anchor set: new CA root (cross-signed) and update key by default",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			info, err := c.RotateAnchors(cmd.Context(), keys)
			if err != nil {
				return err
			}
			return a.print(info, anchorsTable(info))
		}}
	rotateAnchors.Flags().StringSliceVar(&keys, "keys", nil, "keys to replace: ca, update, firmware (default ca,update)")
	anchorsCmd.AddCommand(showAnchors, rotateAnchors)

	datakeys := &cobra.Command{Use: "datakeys", Short: "devices' data keys"}
	rotateKeys := &cobra.Command{Use: "rotate", Short: "give every device a new primary data key (escrowed)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			r, err := c.RotateDataKeys(cmd.Context())
			if err != nil {
				return err
			}
			err = a.print(r, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "devices\t%d\nfailed\t%d\n", r.Devices, r.Failed)
				for _, e := range r.Errors {
					fmt.Fprintf(w, "error\t%s\n", e)
				}
			})
			if err == nil && r.Failed > 0 {
				err = fmt.Errorf("%d devices got no new data key", r.Failed)
			}
			return err
		}}
	datakeys.AddCommand(rotateKeys)

	var outFile string
	escrowCmd := &cobra.Command{Use: "escrow", Short: "escrowed data keys"}
	recoverCmd := &cobra.Command{Use: "recover DEVICE VERSION --out FILE",
		Short: "release an escrowed data key to this operator (audited); the key is written to --out, never printed",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := strconv.ParseUint(args[1], 10, 32)
			if err != nil || v == 0 {
				return fmt.Errorf("version %q: want a positive number", args[1])
			}
			if outFile == "" {
				return errors.New("--out is required: the key goes to a file (mode 0600), not to the terminal")
			}
			// The file is made before the key is released, so a path
			// that exists is refused before the release is audited.
			secret, err := createSecret(outFile)
			if err != nil {
				return err
			}
			defer secret.discard()
			c, err := a.client()
			if err != nil {
				return err
			}
			r, err := c.RecoverEscrow(cmd.Context(), args[0], uint32(v))
			if err != nil {
				return err
			}
			key, err := a.operatorKey()
			if err != nil {
				return err
			}
			if want := adminapi.RecoveryAudience(args[0], uint32(v)); r.Audience != want {
				return fmt.Errorf("answer bound to %q, asked for %q", r.Audience, want)
			}
			raw, err := protocol.OpenEncrypt0(key, r.Sealed, r.Audience)
			if err != nil {
				return fmt.Errorf("open the released key: %w", err)
			}
			defer clear(raw)
			if err := secret.write([]byte(hex.EncodeToString(raw) + "\n")); err != nil {
				return err
			}
			out := struct {
				Device  string `json:"device"`
				Version uint32 `json:"version"`
				Status  string `json:"status"`
				File    string `json:"file"`
			}{r.Device, r.Version, r.Status, outFile}
			return a.print(out, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "device\t%s\nversion\t%d\nstatus\t%s\nkey written to\t%s (hex)\n", out.Device, out.Version, out.Status, out.File)
			})
		}}
	recoverCmd.Flags().StringVar(&outFile, "out", "", "new file to write the key to, hex (created with mode 0600; an existing path is refused)")
	escrowCmd.AddCommand(recoverCmd)

	var fw adminapi.FirmwareRequest
	var image string
	firmwareCmd := &cobra.Command{Use: "firmware", Short: "firmware releases"}
	publish := &cobra.Command{Use: "publish --image FILE --version N --uri URI --vendor UUID --class UUID [--staged]",
		Short: "sign a manifest for an image with the anchors' firmware key and offer it to the fleet (or stage it for a campaign)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if image == "" || fw.URI == "" || fw.Version == 0 || fw.Vendor == "" || fw.Class == "" {
				return errors.New("--image, --version, --uri, --vendor and --class are required")
			}
			img, err := os.ReadFile(image)
			if err != nil {
				return err
			}
			d := sha256.Sum256(img)
			fw.Digest, fw.Size = d[:], uint64(len(img))
			c, err := a.client()
			if err != nil {
				return err
			}
			info, err := c.PublishFirmware(cmd.Context(), fw)
			if err != nil {
				return err
			}
			return a.print(info, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "version\t%d\nsigned by\t%s\nmanifest\t%d bytes\n", info.Version, info.KeyID, len(info.Manifest))
				if fw.Staged {
					fmt.Fprintf(w, "staged\tyes: roll it out with campaign create --kind firmware --release %d\n", info.Version)
				}
			})
		}}
	fl := publish.Flags()
	fl.StringVar(&image, "image", "", "firmware image file")
	fl.Uint32Var(&fw.Version, "version", 0, "firmware version (greater than the current release)")
	fl.StringVar(&fw.URI, "uri", "", "where devices fetch the image")
	fl.StringVar(&fw.Vendor, "vendor", "", "vendor UUID")
	fl.StringVar(&fw.Class, "class", "", "device class UUID")
	fl.BoolVar(&fw.Staged, "staged", false, "stage the release: only firmware campaigns naming it roll it out")
	firmwareCmd.AddCommand(publish)

	return []*cobra.Command{anchorsCmd, datakeys, escrowCmd, firmwareCmd}, []*cobra.Command{revoke}
}

// alreadyRevoked reports whether the admin API refused a revocation because
// the device was revoked before (409).
func alreadyRevoked(err error) bool {
	var apiErr *client.APIError
	return errors.As(err, &apiErr) && apiErr.Code == adminapi.CodeAlreadyRevoked
}

// secretFile is a new file for key material: created with mode 0600 and
// O_EXCL, so an existing path (a file another user can read, a planted
// symlink) is refused rather than written through.
type secretFile struct {
	f       *os.File
	written bool
}

// createSecret creates path for a secret; it fails if path exists.
func createSecret(path string) (*secretFile, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("%s exists: name a new file for the key", path)
	}
	if err != nil {
		return nil, err
	}
	return &secretFile{f: f}, nil
}

// write writes b and closes the file.
func (s *secretFile) write(b []byte) error {
	if _, err := s.f.Write(b); err != nil {
		return err
	}
	if err := s.f.Close(); err != nil {
		return err
	}
	s.written = true
	return nil
}

// discard removes the file unless write succeeded, so a failed recovery
// leaves no empty or partial key file behind.
func (s *secretFile) discard() {
	if !s.written {
		s.f.Close()
		os.Remove(s.f.Name())
	}
}

func anchorsTable(info adminapi.AnchorsInfo) func(w *tabwriter.Writer) {
	return func(w *tabwriter.Writer) {
		fmt.Fprintf(w, "version\t%d\nroot\t%s (key %s)\nupdate key\t%s\nfirmware key\t%s\nissued\t%s\n",
			info.Version, info.Root, info.RootKeyID, info.UpdateKeyID, info.FirmwareKID, stamp(info.IssuedAt))
		if info.Prepared != 0 {
			fmt.Fprintf(w, "prepared\tv%d (an anchors campaign rolls it out; published when it completes)\n", info.Prepared)
		}
	}
}

// operatorKey loads the operator's private key, to open what fleetd
// sealed to its certificate.
func (a *app) operatorKey() (*ecdsa.PrivateKey, error) {
	tc, err := client.LoadCredential(a.credential())
	if err != nil {
		return nil, err
	}
	if len(tc.Certificates) == 0 {
		return nil, fmt.Errorf("no operator certificate in %s", filepath.Clean(a.credential()))
	}
	k, ok := tc.Certificates[0].PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		return nil, errors.New("operator key is not ECDSA P-256")
	}
	return k, nil
}
