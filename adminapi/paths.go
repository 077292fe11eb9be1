package adminapi

import "net/url"

// Paths of the API, relative to https://ADMIN-ADDRESS.
const (
	PathStatus            = "/v1/status"
	PathDevices           = "/v1/devices"
	PathDevicesBatch      = "/v1/devices/batch"
	PathRotations         = "/v1/rotations"
	PathAuditVerify       = "/v1/audit/verify"
	PathAudit             = "/v1/audit"
	PathAuditExport       = "/v1/audit/export"
	PathRotationsProgress = "/v1/rotations/progress"
	PathAnchors           = "/v1/anchors"
	PathAnchorsRotate     = "/v1/anchors/rotate"
	PathDataKeysRotate    = "/v1/datakeys/rotate"
	PathEscrowRecover     = "/v1/escrow/recover"
	PathFirmware          = "/v1/firmware"
)

// DevicePath is the path of one device; the id is escaped.
func DevicePath(id string) string { return PathDevices + "/" + url.PathEscape(id) }

// RevokePath is the path that revokes one device.
func RevokePath(id string) string { return DevicePath(id) + "/revoke" }
