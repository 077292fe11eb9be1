package rotation

import "context"

// ResendOnRestore is the embedded broker's OnRestore hook: a session the
// broker had to restore lost what was published to it meanwhile, so the
// device's open steps are sent again; a failure is logged, since the
// device's next hello reconciles anyway.
func (e *Engine) ResendOnRestore(ctx context.Context) func(device string) {
	return func(device string) {
		if err := e.Resend(ctx, device); err != nil {
			e.log.Warn("resend after a restored session failed", "device", device, "err", err)
		}
	}
}
