package auth

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"unicode/utf8"
)

// strictSegments checks the header and claims of a compact JWS, whose
// base64 golang-jwt has already decoded, as JSON that has one reading.
// encoding/json is lenient where JWT libraries disagree: it replaces invalid
// UTF-8 and lone surrogate escapes such as \ud800 with U+FFFD, so distinct
// subjects would collapse into one user, and it keeps the last of repeated
// names, where other libraries keep the first. Both are refused here.
func strictSegments(token string) error {
	header, rest, _ := strings.Cut(token, ".")
	claims, _, _ := strings.Cut(rest, ".")
	for _, seg := range []struct{ name, b64 string }{{"header", header}, {"claims", claims}} {
		b, err := base64.RawURLEncoding.DecodeString(seg.b64)
		if err != nil {
			return fmt.Errorf("%w: %s are not base64url", ErrMalformedToken, seg.name)
		}
		if err := strictJSON(seg.name, b); err != nil {
			return err
		}
	}
	return nil
}

// strictJSON checks that b, the JSON of the token part named what, is valid
// UTF-8, has no escape that stands for a lone UTF-16 surrogate, and has no
// object, at any depth, that gives a name twice (names compared after
// unescaping, so "sub" and "s\u0075b" are the same name).
func strictJSON(what string, b []byte) error {
	if !utf8.Valid(b) {
		i := invalidUTF8At(b)
		return fmt.Errorf("%w: the token's %s hold the byte 0x%02x at offset %d", ErrNotUTF8, what, b[i], i)
	}
	if i, esc, ok := loneSurrogate(b); ok {
		return fmt.Errorf("%w: the token's %s hold the escape %s at offset %d, half of a UTF-16 surrogate pair with no other half", ErrNotUTF8, what, esc, i)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := uniqueNames(dec, what, 0); err != nil {
		return err
	}
	return nil
}

// maxJSONDepth bounds the nesting uniqueNames follows; a token is at most
// MaxTokenBytes, so this only guards the stack against a pathological one.
const maxJSONDepth = 64

// uniqueNames reads one JSON value from dec and refuses an object in it that
// repeats a name.
func uniqueNames(dec *json.Decoder, what string, depth int) error {
	if depth > maxJSONDepth {
		return fmt.Errorf("%w: the token's %s nest deeper than %d levels", ErrMalformedToken, what, maxJSONDepth)
	}
	t, err := dec.Token()
	if err != nil {
		return fmt.Errorf("%w: the token's %s are not JSON: %v", ErrMalformedToken, what, err)
	}
	d, ok := t.(json.Delim)
	if !ok {
		return nil
	}
	switch d {
	case '{':
		seen := make(map[string]struct{})
		for dec.More() {
			t, err := dec.Token()
			if err != nil {
				return fmt.Errorf("%w: the token's %s are not JSON: %v", ErrMalformedToken, what, err)
			}
			name, _ := t.(string)
			if _, dup := seen[name]; dup {
				if depth == 0 && what == "claims" {
					return fmt.Errorf("%w: the claim %s appears more than once", ErrDuplicateClaim, quote(name))
				}
				return fmt.Errorf("%w: the name %s appears more than once in an object of the token's %s", ErrDuplicateClaim, quote(name), what)
			}
			seen[name] = struct{}{}
			if err := uniqueNames(dec, what, depth+1); err != nil {
				return err
			}
		}
	case '[':
		for dec.More() {
			if err := uniqueNames(dec, what, depth+1); err != nil {
				return err
			}
		}
	}
	if _, err := dec.Token(); err != nil { // the closing delimiter
		return fmt.Errorf("%w: the token's %s are not JSON: %v", ErrMalformedToken, what, err)
	}
	return nil
}

// invalidUTF8At is the offset of the first byte of b that does not start a
// valid UTF-8 sequence.
func invalidUTF8At(b []byte) int {
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && n == 1 {
			return i
		}
		i += n
	}
	return 0
}

// loneSurrogate finds, inside the strings of JSON text b, a \uXXXX escape in
// the surrogate range D800-DFFF that is not a high surrogate followed at
// once by an escaped low one. It returns its offset and spelling.
func loneSurrogate(b []byte) (int, string, bool) {
	inString := false
	for i := 0; i < len(b); i++ {
		c := b[i]
		if !inString {
			inString = c == '"'
			continue
		}
		switch c {
		case '"':
			inString = false
		case '\\':
			r, ok := escapedUnit(b, i)
			if !ok {
				i++ // a one-character escape such as \" or \\
				continue
			}
			switch {
			case r >= 0xd800 && r < 0xdc00:
				if lo, ok := escapedUnit(b, i+6); ok && lo >= 0xdc00 && lo < 0xe000 {
					i += 11
					continue
				}
				return i, string(b[i : i+6]), true
			case r >= 0xdc00 && r < 0xe000:
				return i, string(b[i : i+6]), true
			}
			i += 5
		}
	}
	return 0, "", false
}

// escapedUnit decodes a \uXXXX escape at b[i:], if there is one.
func escapedUnit(b []byte, i int) (rune, bool) {
	if i+6 > len(b) || b[i] != '\\' || b[i+1] != 'u' {
		return 0, false
	}
	var r rune
	for _, c := range b[i+2 : i+6] {
		switch {
		case '0' <= c && c <= '9':
			r = r<<4 | rune(c-'0')
		case 'a' <= c && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case 'A' <= c && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}
