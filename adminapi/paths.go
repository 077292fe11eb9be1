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

// QuerySelector is the query parameter of PathDevices that selects
// devices by labels and model, in the Kubernetes label-selector grammar
// (`model=x,site in (a,b),!beta`).
const QuerySelector = "selector"

// DevicesPath lists the devices selector selects; "" lists all.
func DevicesPath(selector string) string {
	if selector == "" {
		return PathDevices
	}
	return PathDevices + "?" + url.Values{QuerySelector: {selector}}.Encode()
}

// LabelsPath is the path that changes one device's labels.
func LabelsPath(id string) string { return DevicePath(id) + "/labels" }

// RevokePath is the path that revokes one device.
func RevokePath(id string) string { return DevicePath(id) + "/revoke" }
