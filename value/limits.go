package value

import (
	"bytes"
	"fmt"
	"unicode/utf8"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
)

// Limits are the sizes the engine enforces. Zero fields take the defaults.
type Limits struct {
	// MaxKeyBytes bounds a key's length (default 1024).
	MaxKeyBytes int
	// MaxValueBytes bounds a value, before and after an op (default 1 MiB).
	MaxValueBytes int
	// MaxOps bounds the ops of one sync or commit (default 1000).
	MaxOps int
	// MaxResponseBytes bounds one answer's changes (default 4 MiB); a commit
	// whose changes could not fit in one answer is refused.
	MaxResponseBytes int
}

// Default limits, the defaults of dalv serve's --max-* flags.
const (
	DefaultMaxKeyBytes      = 1024
	DefaultMaxValueBytes    = 1 << 20
	DefaultMaxOps           = 1000
	DefaultMaxResponseBytes = 4 << 20
	// MaxDeviceIDBytes bounds a device id.
	MaxDeviceIDBytes = 128
	// MaxIdempotencyKeyBytes bounds a backend commit's idempotency key.
	MaxIdempotencyKeyBytes = 128
)

// WithDefaults returns l with zero or negative fields set to the defaults.
func (l Limits) WithDefaults() Limits {
	if l.MaxKeyBytes <= 0 {
		l.MaxKeyBytes = DefaultMaxKeyBytes
	}
	if l.MaxValueBytes <= 0 {
		l.MaxValueBytes = DefaultMaxValueBytes
	}
	if l.MaxOps <= 0 {
		l.MaxOps = DefaultMaxOps
	}
	if l.MaxResponseBytes <= 0 {
		l.MaxResponseBytes = DefaultMaxResponseBytes
	}
	return l
}

// Validate reports whether l, defaults filled in, is usable: one key and
// value must fit in an answer.
func (l Limits) Validate() error {
	l = l.WithDefaults()
	if need := l.MaxKeyBytes + l.MaxValueBytes + ChangeOverhead; l.MaxResponseBytes < need {
		return fmt.Errorf("max response bytes %d (--max-response-bytes) is below one key and value (%d bytes, from --max-key-bytes %d and --max-value-bytes %d): raise it or lower those", l.MaxResponseBytes, need, l.MaxKeyBytes, l.MaxValueBytes)
	}
	return nil
}

// ValidateKey checks that key is 1 to max bytes of UTF-8 with no control
// characters.
func ValidateKey(key string, max int) error {
	switch {
	case key == "":
		return Errorf(ErrInvalid, "empty key")
	case len(key) > max:
		return Errorf(ErrLimit, "key %.40q... is %d bytes, over the key limit of %d bytes (--max-key-bytes)", key, len(key), max)
	case !utf8.ValidString(key):
		return Errorf(ErrInvalid, "key %q is not valid UTF-8", key)
	}
	if r, ok := controlChar(key); ok {
		return Errorf(ErrInvalid, "key %q contains the control character %U", key, r)
	}
	return nil
}

// controlChar returns the first control character in s, if any: C0 (below
// U+0020, which includes NUL, tab and newline), DEL, or C1 (U+0080 to
// U+009F). Keys, device ids and partition names may not hold them, so none
// can forge a line in a log or a terminal, or end early in a C string.
func controlChar(s string) (rune, bool) {
	for _, r := range s {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return r, true
		}
	}
	return 0, false
}

// ValidateOps checks the shape of ops against l: their count, each kind,
// key and value. It does not look at the partition's state or at domains.
func ValidateOps(ops []*dalvv1.Op, l Limits) error {
	l = l.WithDefaults()
	if len(ops) > l.MaxOps {
		return Errorf(ErrLimit, "%d ops, over the limit of %d ops per sync or commit (--max-ops)", len(ops), l.MaxOps)
	}
	for i, op := range ops {
		if err := validateOp(op, l); err != nil {
			return fmt.Errorf("op %d: %w", i, err)
		}
	}
	return nil
}

func validateOp(op *dalvv1.Op, l Limits) error {
	if op == nil {
		return Errorf(ErrInvalid, "missing op")
	}
	if err := ValidateKey(op.GetKey(), l.MaxKeyBytes); err != nil {
		return err
	}
	key := op.GetKey()
	v := op.GetValue()
	switch op.GetKind() {
	case dalvv1.OpKind_OP_KIND_PUT:
		switch k := v.GetKind().(type) {
		case nil:
			return Errorf(ErrInvalid, "PUT %q has no value (set value.scalar or value.list)", key)
		case *dalvv1.Value_List:
			items := k.List.GetItems()
			for i := range items {
				for j := range i {
					if bytes.Equal(items[i], items[j]) {
						return Errorf(ErrInvalid, "PUT %q: list items %d and %d are equal; a list holds each item once", key, j, i)
					}
				}
			}
		}
		if n := Size(v); n > l.MaxValueBytes {
			return Errorf(ErrLimit, "PUT %q: value is %d bytes, over the value limit of %d bytes (--max-value-bytes)", key, n, l.MaxValueBytes)
		}
	case dalvv1.OpKind_OP_KIND_DELETE:
		if v != nil {
			return Errorf(ErrInvalid, "DELETE %q carries a value; leave value unset", key)
		}
	case dalvv1.OpKind_OP_KIND_LIST_ADD, dalvv1.OpKind_OP_KIND_LIST_REMOVE:
		if _, ok := v.GetKind().(*dalvv1.Value_Scalar); !ok {
			return Errorf(ErrInvalid, "%s %q needs the element as value.scalar", opName(op.GetKind()), key)
		}
		if n := len(v.GetScalar()); n > l.MaxValueBytes {
			return Errorf(ErrLimit, "%s %q: element is %d bytes, over the value limit of %d bytes (--max-value-bytes)", opName(op.GetKind()), key, n, l.MaxValueBytes)
		}
	default:
		return Errorf(ErrInvalid, "op on %q has kind %v; use PUT, DELETE, LIST_ADD or LIST_REMOVE", key, op.GetKind())
	}
	return nil
}

// ValidateDeviceID checks a device id: 1 to MaxDeviceIDBytes bytes of
// valid UTF-8 with no control characters. Any other printable text is
// accepted, so UUIDs, hex and names such as "Zoé's phone" all do.
func ValidateDeviceID(id string) error {
	switch {
	case id == "":
		return Errorf(ErrInvalid, "missing deviceId")
	case len(id) > MaxDeviceIDBytes:
		return Errorf(ErrInvalid, "deviceId is %d bytes, over %d", len(id), MaxDeviceIDBytes)
	case !utf8.ValidString(id):
		return Errorf(ErrInvalid, "deviceId %q is not valid UTF-8", id)
	}
	if r, ok := controlChar(id); ok {
		return Errorf(ErrInvalid, "deviceId %q contains the control character %U; use printable text", id, r)
	}
	return nil
}

// MaxPartitionNameBytes bounds a user id or shared partition name.
const MaxPartitionNameBytes = 256

// ValidatePartitionName checks a user id or shared partition name: 1 to
// MaxPartitionNameBytes bytes of valid UTF-8 with no control characters.
// It is the one rule for user ids, whether they come from a token, a
// backend request or a shared partition's configuration.
func ValidatePartitionName(name string) error {
	switch {
	case name == "":
		return Errorf(ErrInvalid, "empty partition name")
	case len(name) > MaxPartitionNameBytes:
		return Errorf(ErrInvalid, "partition name is %d bytes, over %d", len(name), MaxPartitionNameBytes)
	case !utf8.ValidString(name):
		return Errorf(ErrInvalid, "partition name %q is not valid UTF-8", name)
	}
	if r, ok := controlChar(name); ok {
		return Errorf(ErrInvalid, "partition name %q contains the control character %U", name, r)
	}
	return nil
}

// ValidateIdempotencyKey checks a backend commit's idempotency key: empty
// (none), or 1 to MaxIdempotencyKeyBytes printable ASCII characters (space
// to tilde), which every client can send and every log can show.
func ValidateIdempotencyKey(key string) error {
	if len(key) > MaxIdempotencyKeyBytes {
		return Errorf(ErrInvalid, "idempotencyKey is %d bytes, over the limit of %d; use a random id such as a UUID", len(key), MaxIdempotencyKeyBytes)
	}
	for i := 0; i < len(key); i++ {
		if c := key[i]; c < 0x20 || c > 0x7e {
			return Errorf(ErrInvalid, "idempotencyKey %q holds the byte %#x at %d; only printable ASCII (space to tilde) is accepted", key, c, i)
		}
	}
	return nil
}

// DefaultMaxRequestBytes bounds one request's encoded size, the default of
// dalv serve's --max-request-bytes flag.
const DefaultMaxRequestBytes = 8 << 20

// ChangeOverhead bounds the bytes a Change adds around its key and value.
const ChangeOverhead = 32

// ChangeSize is an upper bound of the encoded size of a Change of key to v,
// the size the server counts against MaxResponseBytes.
func ChangeSize(key string, v *dalvv1.Value) int {
	n := len(key) + ChangeOverhead + Size(v)
	if l := v.GetList(); l != nil {
		n += 6 * len(l.GetItems())
	}
	return n
}

// DefaultSystemPrefixes is the zero-config domain split: keys under "sys/"
// are system-domain (only backends write them), all others user-domain.
var DefaultSystemPrefixes = []string{"sys/"}
