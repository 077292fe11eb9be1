// Package campaign runs staged changes over the devices a label selector
// chooses: a canary stage first, then wider ones, each started within a
// rate and passed only while failures among the devices reached stay under
// a threshold. Campaigns are durable store records (store.CampaignStore)
// that only change desired state through the part that owns it (the
// rotation engine for identities), so fleetd resumes them after a restart
// at the stage they were in, without asking for any version twice.
//
// What a campaign changes is its Kind: how to start the change on one
// device, how to read its outcome from the device's record, how to give up
// on it and how to roll it back. The kinds: identity rotation (Identity),
// data-key rotation (DataKey) and staged firmware releases (Firmware);
// anchor roll-outs plug in as a further kind. A rollback is measured:
// from the operator's request until every device it changed that is
// connected runs a state the broker and engine accept (M10).
//
// A device that has not been connected since its stage began is away: it
// neither passes nor fails the stage, and its change stays desired, so it
// converges when it comes back, which the campaign reports.
package campaign
