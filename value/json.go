package value

import (
	"encoding/json"
	"fmt"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
)

// JSON returns a scalar value holding v encoded as JSON.
func JSON(v any) (*dalvv1.Value, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode json: %w", err)
	}
	return Scalar(b), nil
}

// UnmarshalJSON decodes the JSON scalar v into dst. A list is an error.
func UnmarshalJSON(v *dalvv1.Value, dst any) error {
	if IsList(v) {
		return fmt.Errorf("decode json: value is a list, not a JSON scalar")
	}
	if err := json.Unmarshal(v.GetScalar(), dst); err != nil {
		return fmt.Errorf("decode json: %w", err)
	}
	return nil
}
