// Package directory answers the proxy's one question: which island does a
// user live on. Two implementations: LDAP (go-ldap, several servers, a
// positive/negative cache that keeps serving stale answers while every
// server is down) and a static file (the embedded default).
package directory

import (
	"context"
	"errors"
)

// Errors a Directory returns; the proxy maps them to protocol answers.
var (
	// ErrUnknownUser: the directory answered, and the user is not in it.
	ErrUnknownUser = errors.New("directory: unknown user")
	// ErrUnavailable: no answer (every LDAP server down or timing out) and
	// nothing usable in the cache.
	ErrUnavailable = errors.New("directory: unavailable")
)

// Result is where a user lives.
type Result struct {
	Island string
	// Cached: answered from the cache; Stale: from an expired entry,
	// served because no server answered.
	Cached, Stale bool
}

// Directory looks users up. Implementations are safe for concurrent use.
type Directory interface {
	// Lookup finds the island of user, a name already normalised by
	// Names.Normalize. It returns ErrUnknownUser or ErrUnavailable (maybe
	// wrapped) when it cannot.
	Lookup(ctx context.Context, user string) (Result, error)
}
