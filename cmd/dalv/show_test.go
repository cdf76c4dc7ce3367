package main

import (
	"testing"

	"github.com/dalvdb/dalv/value"
)

func TestEncodeArg(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		arg  string
		raw  bool
		want string // "" with wantErr
		err  bool
	}{
		{arg: "light", want: `"light"`},
		{arg: "two words", want: `"two words"`},
		{arg: `"dark"`, want: `"dark"`},
		{arg: "42", want: "42"},
		{arg: "-1.5e3", want: "-1.5e3"},
		{arg: "true", want: "true"},
		{arg: "null", want: "null"},
		{arg: `{"a": [1, 2]}`, want: `{"a": [1, 2]}`},
		{arg: "", want: `""`},
		{arg: `{"a":`, err: true},
		{arg: "[1,", err: true},
		{arg: "3 apples", err: true},
		{arg: `"unclosed`, err: true},
		{arg: "light", raw: true, want: "light"},
		{arg: `{"a":`, raw: true, want: `{"a":`},
		{arg: "\xff", raw: true, want: "\xff"},
	} {
		got, err := encodeArg(tc.arg, tc.raw)
		if tc.err {
			if err == nil {
				t.Errorf("encodeArg(%q, %v) = %q, want an error", tc.arg, tc.raw, got)
			}
			continue
		}
		if err != nil || string(got) != tc.want {
			t.Errorf("encodeArg(%q, %v) = %q, %v; want %q", tc.arg, tc.raw, got, err, tc.want)
		}
	}
}

func TestValueText(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		in   []byte
		list [][]byte
		want string
	}{
		{name: "string", in: []byte(`"dark"`), want: `"dark"`},
		{name: "object compacted", in: []byte("{\"a\": [1,\n 2]}"), want: `{"a":[1,2]}`},
		{name: "bare text", in: []byte("dark"), want: "base64:ZGFyaw=="},
		{name: "not UTF-8", in: []byte{0xff, 0xfe}, want: "base64://4="},
		{name: "empty", in: []byte{}, want: "base64:"},
		{name: "list", list: [][]byte{[]byte(`"a"`), []byte("b")}, want: `["a", base64:Yg==]`},
	} {
		v := value.Scalar(tc.in)
		if tc.list != nil {
			v = value.List(tc.list...)
		}
		if got := valueText(v); got != tc.want {
			t.Errorf("%s: valueText = %q, want %q", tc.name, got, tc.want)
		}
	}
}
