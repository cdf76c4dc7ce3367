// Package auth verifies the credentials DalvDB accepts: device tokens (JWTs
// carrying a user id) and backend API keys.
//
// A [Verifier] turns a token into [Claims] or refuses it. [NewHS256] builds
// the verifier over a shared secret; [NewPublicKey] the verifier of the
// tokens identity providers sign (RS*, PS*, ES*, EdDSA) with keys from PEM
// files and JWKS URLs; [ByAlgorithm] routes each token to one of them by its
// alg; [Cached] remembers verified tokens. Callers depend only on
// [Verifier].
//
// # Guarantees
//
// A Verifier built by [NewHS256] accepts a token only when all of these hold
// (one built by [NewPublicKey] likewise, with its algorithms and keys in
// place of HS256 and the secret, and aud and iss required unless
// [PublicKeyOptions.NoAudience]):
//
//   - it is a compact JWS of three canonical base64url segments, at most
//     [MaxTokenBytes] long;
//   - its header names alg HS256 (and nothing else: "none", "hs256", HS384,
//     HS512, RS256 and every other value is refused before any key is used);
//   - its HMAC-SHA256 signature, made with the configured secret, matches
//     (compared in constant time);
//   - it has an exp claim and the current time is before exp plus the leeway;
//   - nbf and iat, when present, are not after the current time plus the
//     leeway;
//   - its header and claims are JSON with one reading: valid UTF-8, no
//     escape of half a UTF-16 surrogate pair (\ud800 alone), and no object
//     that gives a name twice, so no two libraries, and no two subjects,
//     can read one token differently;
//   - its sub claim (or the configured user claim) is a non-empty string
//     that is a valid user id (1 to 256 bytes, no control characters:
//     value.ValidatePartitionName, the one rule for user ids), which
//     becomes [Claims.Subject];
//   - its aud contains [HS256Options.Audience] and its iss equals
//     [HS256Options.Issuer], each when configured.
//
// Every refusal matches exactly one of the sentinel errors in this package
// under errors.Is (none of golang-jwt's), and its message says what was
// wrong in words a person can act on. Messages never contain the token, its
// signature or a secret; values taken from a token (its alg, aud or iss) are
// quoted and truncated.
//
// A public-key token is verified only by a key of its alg's type (an RSA
// key never verifies an HS256 token), chosen by its kid; keys offered by
// the token itself (jku, x5u, jwk, x5c) are refused, never fetched. See
// [NewPublicKey] for how JWKS are cached and refreshed.
//
// Verifiers and [KeySet] are safe for concurrent use. [KeySet.Check] takes
// time independent of the contents of the keys and of the presented key.
//
// # Caveats
//
// HS256 is symmetric: whoever can verify tokens can also mint them, so the
// secret must be kept like a private key and HS256 is meant for development
// and for deployments where the token issuer and DalvDB share a secret.
// Tokens cannot be revoked before they expire and jti is not tracked, so a
// stolen token stays usable until exp; keep lifetimes short.
package auth
