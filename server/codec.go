package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// jsonCodecs replace Connect's JSON codecs (under both names a client may
// ask for) by ones whose output is the same protojson without any
// whitespace. protojson puts a space after some commas in some builds and
// not in others, on purpose; the server's answers should not change with
// the build, so that documented answers (the README's curl session) and
// byte comparisons hold.
func jsonCodecs() []connect.HandlerOption {
	return []connect.HandlerOption{
		connect.WithCodec(compactJSONCodec{name: "json"}),
		connect.WithCodec(compactJSONCodec{name: "json; charset=utf-8"}),
	}
}

// compactJSONCodec is protojson, as Connect's own JSON codec, with compact
// output.
type compactJSONCodec struct{ name string }

func (c compactJSONCodec) Name() string { return c.name }

func (c compactJSONCodec) Marshal(m any) ([]byte, error) {
	pm, ok := m.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("%T is not a protobuf message", m)
	}
	b, err := protojson.Marshal(pm)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	out.Grow(len(b))
	if err := json.Compact(&out, b); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

func (c compactJSONCodec) Unmarshal(b []byte, m any) error {
	pm, ok := m.(proto.Message)
	if !ok {
		return fmt.Errorf("%T is not a protobuf message", m)
	}
	if len(b) == 0 {
		return errors.New("zero-length payload is not a valid JSON object")
	}
	// Unknown fields are dropped, as Connect's codec does, so that clients
	// and servers of different schema versions interoperate.
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(b, pm); err != nil {
		return fmt.Errorf("unmarshal into %T: %w", m, err)
	}
	return nil
}
