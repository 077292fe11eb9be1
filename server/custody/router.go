package custody

import (
	"crypto"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/keyfleet/keyfleet/server/hsm"
)

// router is the custody of keys spread over several tokens (and modules),
// as the operator's key URIs place them: one hsm.Token, and so one session
// pool, per distinct token, and each label fleetd's parts ask for sent to
// its role's token under the role's object label. It is safe for
// concurrent use: it only reads its routes after openRouter.
type router struct {
	tokens []*hsm.Token
	routes []route // longest label first, so the most specific role wins
	def    route   // labels of no role: the CA's token, label unchanged
}

// route maps a role's label (and the labels derived from it, such as a
// rotation's LABEL-v2) to a token and an object label there.
type route struct {
	label, object string
	tok           *hsm.Token
}

// openRouter opens each distinct token of cfg.Keys once.
func openRouter(cfg hsm.Config) (_ *router, err error) {
	r := &router{}
	defer func() {
		if err != nil {
			_ = r.Close()
		}
	}()
	open := map[[2]string]*hsm.Token{}
	for _, role := range Roles() {
		p, ok := cfg.Keys[role.Name]
		if !ok {
			return nil, fmt.Errorf("custody: no place for the %s key", role.Name)
		}
		id := [2]string{p.Token.Module, p.Token.TokenLabel}
		tok := open[id]
		if tok == nil {
			if tok, err = hsm.Open(p.Token); err != nil {
				return nil, fmt.Errorf("custody: %s key: %w", role.Name, err)
			}
			open[id] = tok
			r.tokens = append(r.tokens, tok)
		}
		r.routes = append(r.routes, route{label: role.Label, object: p.Object, tok: tok})
		if role.Name == RoleCA {
			r.def = route{tok: tok}
		}
	}
	sort.SliceStable(r.routes, func(i, j int) bool { return len(r.routes[i].label) > len(r.routes[j].label) })
	return r, nil
}

// place returns the token and object label of the key fleetd calls label.
func (r *router) place(label string) (*hsm.Token, string) {
	for _, rt := range r.routes {
		if label == rt.label {
			return rt.tok, rt.object
		}
		if suffix, ok := strings.CutPrefix(label, rt.label+"-"); ok {
			return rt.tok, rt.object + "-" + suffix
		}
	}
	return r.def.tok, label
}

func (r *router) GenerateP256(label string) (crypto.Signer, error) {
	t, o := r.place(label)
	return t.GenerateP256(o)
}

func (r *router) Signer(label string) (crypto.Signer, error) {
	t, o := r.place(label)
	return t.Signer(o)
}

func (r *router) GenerateKEK(label string) error {
	t, o := r.place(label)
	return t.GenerateKEK(o)
}

func (r *router) HasKEK(label string) (bool, error) {
	t, o := r.place(label)
	return t.HasKEK(o)
}

func (r *router) NewDataKey(kek string, size int) (key, wrapped []byte, err error) {
	t, o := r.place(kek)
	return t.NewDataKey(o, size)
}

func (r *router) UnwrapDataKey(kek string, wrapped []byte) ([]byte, error) {
	t, o := r.place(kek)
	return t.UnwrapDataKey(o, wrapped)
}

// URI is the key's RFC 7512 URI where it really lives.
func (r *router) URI(label string) string {
	t, o := r.place(label)
	return t.URI(o)
}

// Ops sums the operations of every token.
func (r *router) Ops() uint64 {
	var n uint64
	for _, t := range r.tokens {
		n += t.Ops()
	}
	return n
}

// Close closes every token, the last opened first.
func (r *router) Close() error {
	var errs []error
	for i := len(r.tokens) - 1; i >= 0; i-- {
		errs = append(errs, r.tokens[i].Close())
	}
	r.tokens = nil
	return errors.Join(errs...)
}
