package campaign

// NewFor builds the campaign service for a store that keeps campaigns (a
// Store), with the kinds of parts; it returns nil for a store that keeps
// none, and fleetd then runs no campaigns. o.Store and o.Kinds are set
// from st and p.
func NewFor(st any, p Parts, o Options) *Service {
	cs, ok := st.(Store)
	if !ok {
		return nil
	}
	o.Store, o.Kinds = cs, Kinds(p)
	return New(o)
}

// Store is where the service keeps its campaigns, for the policy
// scheduler that creates them.
func (s *Service) Store() Store { return s.opts.Store }
