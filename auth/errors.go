package auth

import "errors"

// ErrMissingToken is returned when a request carries no token: no
// Authorization header, an empty one, or "Bearer" with nothing after it.
var ErrMissingToken = errors.New("missing bearer token")

// ErrMalformedToken is returned for input that is not a well-formed JWT (wrong
// number of segments, bad base64 or JSON, no alg, a claim of the wrong type)
// and for an Authorization header that does not use the Bearer scheme.
var ErrMalformedToken = errors.New("malformed token")

// ErrAlgorithm is returned when the token's header names an algorithm the
// verifier does not accept, including "none"; the message quotes the alg
// presented.
var ErrAlgorithm = errors.New("token algorithm not allowed")

// ErrSignature is returned when the signature does not match: the token was
// signed with another key, or was altered after signing.
var ErrSignature = errors.New("token signature invalid")

// ErrExpired is returned when the token's exp has passed; the message says
// when it expired.
var ErrExpired = errors.New("token expired")

// ErrNotYetValid is returned when the token's nbf, or its iat, lies in the
// future; the message says from when it is valid.
var ErrNotYetValid = errors.New("token not yet valid")

// ErrMissingExpiry is returned when a correctly signed token has no exp
// claim, or one that is not a number. DalvDB does not accept tokens that
// never expire.
var ErrMissingExpiry = errors.New("token has no expiry (exp claim)")

// ErrMissingSubject is returned when a correctly signed token has no sub
// claim, an empty one, or one that is not a string: without it there is no
// user to act for.
var ErrMissingSubject = errors.New("token has no subject (sub claim)")

// ErrAudience is returned when an audience is configured and the token's aud
// does not contain it.
var ErrAudience = errors.New("token audience not accepted")

// ErrIssuer is returned when an issuer is configured and the token's iss is
// not it.
var ErrIssuer = errors.New("token issuer not accepted")

// ErrWeakKey is returned when configuring a secret or API key too short to
// resist guessing.
var ErrWeakKey = errors.New("key too short")

// ErrNotUTF8 is returned when a token's header or claims are not valid
// UTF-8, counting an escape of half a UTF-16 surrogate pair (such as
// \ud800) as invalid: decoders replace such text with U+FFFD, so two
// different subjects would become one user.
var ErrNotUTF8 = errors.New("token is not valid UTF-8")

// ErrDuplicateClaim is returned when a token's claims, or its header, give
// one name twice in an object. Libraries disagree on which of the two
// counts, so such a token has no single meaning.
var ErrDuplicateClaim = errors.New("token repeats a claim")

// ErrUserID is returned when a token's user id is a string that is not a
// usable user id: too long, or holding control characters. The message
// says which rule it breaks.
var ErrUserID = errors.New("token user id not accepted")

// ErrUnknownKey is returned when no configured key may verify the token:
// its kid names no key (even after fetching the JWKS again), its kid is not
// a plausible key id, or its header offers a key of its own (jku, x5u, jwk,
// x5c), which is never followed.
var ErrUnknownKey = errors.New("token signing key not known")
