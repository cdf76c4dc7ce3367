package auth

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
)

// byAlg hands each token to the verifier configured for its alg.
type byAlg struct {
	hs, pk Verifier
	algs   []string
}

// ByAlgorithm returns a Verifier that verifies HS256 tokens with hs and
// the algorithms of [PublicKeyAlgs] with pk, either of which may be nil
// (its algorithms are then refused). A token whose alg neither verifier
// takes is refused with [ErrAlgorithm] and a message listing the accepted
// ones. The header is read only to choose; the chosen verifier checks the
// whole token.
func ByAlgorithm(hs, pk Verifier) Verifier {
	switch {
	case hs == nil:
		return pk
	case pk == nil:
		return hs
	}
	return &byAlg{hs: hs, pk: pk, algs: append([]string{algHS256}, PublicKeyAlgs...)}
}

// Verify implements [Verifier].
func (b *byAlg) Verify(ctx context.Context, token string) (*Claims, error) {
	header, _, ok := strings.Cut(token, ".")
	if !ok || len(token) > MaxTokenBytes {
		return b.hs.Verify(ctx, token) // refused for its shape, with the message
	}
	raw, err := base64.RawURLEncoding.Strict().DecodeString(header)
	var h struct {
		Alg *string `json:"alg"`
	}
	if err != nil || json.Unmarshal(raw, &h) != nil || h.Alg == nil {
		return b.hs.Verify(ctx, token)
	}
	switch {
	case *h.Alg == algHS256:
		return b.hs.Verify(ctx, token)
	case isPublicKeyAlg(*h.Alg):
		return b.pk.Verify(ctx, token)
	}
	return nil, fmt.Errorf("%w: %s (this server accepts %s)", ErrAlgorithm, quote(*h.Alg), strings.Join(b.algs, ", "))
}
