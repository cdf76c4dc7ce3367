// Package rules holds write rules: what may be written under which keys,
// declared once in a rules file and checked by the server on every write and
// by the Go SDK before a write is queued.
//
// A rules file is YAML or JSON:
//
//	default: allow            # or refuse: keys no rule matches
//	rules:
//	  - match: "cart/qty/*"   # "*" is one segment, "**" (last) the rest
//	    writer: device        # or backend: only backends may write
//	    kind: json            # scalar, json or list
//	    schema: {type: integer, minimum: 1}   # JSON Schema 2020-12
//	    max_bytes: 64
//	    max_items: 500        # lists only
//	    check: "value <= 99"  # CEL over value, old, key, user, claims
//	    delete: false         # the key may be set, never deleted
//	    create_only: true     # the key is written once
//	    backend_trusted: true # backend commits skip this rule's checks
//
// Keys are split on "/" into segments. A pattern segment is a literal (equal
// to the key's segment), "*" (any one segment) or, as the last segment only,
// "**" (one or more segments, so "sys/**" matches every key starting
// "sys/"). When several rules match a key the most specific wins: the one
// with more literal segments; on a tie, one without "**"; on a tie, the one
// whose first wildcard comes later (a literal earlier in the key beats a
// wildcard there); on a tie, the one earlier in the file.
//
// A refused write is an *Error that wraps ErrPermission (writer, delete,
// create_only) or ErrInvalid (kind, schema, max_bytes, max_items, check).
// A file that does not compile yields a *CompileError per problem, each with
// the file's line.
package rules
