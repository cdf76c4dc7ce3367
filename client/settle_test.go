package client_test

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/dalvdb/dalv/client"
)

type cartMeta struct {
	Note    string `json:"note,omitempty"`
	Deliver string `json:"deliver,omitempty"`
}

// TestSettleFieldsKeepsOtherFields is the README's walkthrough: the phone
// sets the delivery note offline; the laptop sets the note and the delivery
// day. Settling the note for the phone keeps the laptop's delivery day.
func TestSettleFieldsKeepsOtherFields(t *testing.T) {
	srv := startServer(t)
	phone, net := device(t, srv, "phone.db", "jill", client.Options{Resolver: client.MergeJSON})
	laptop, _ := device(t, srv, "laptop.db", "jill", client.Options{Resolver: client.MergeJSON})
	mustSync(t, phone)
	mustSync(t, laptop)

	net.set(true)
	if err := phone.PutJSON("cart/meta", cartMeta{Note: "ring twice"}); err != nil {
		t.Fatal(err)
	}
	if err := laptop.PutJSON("cart/meta", cartMeta{Note: "leave at the door", Deliver: "friday"}); err != nil {
		t.Fatal(err)
	}
	mustSync(t, laptop)
	net.set(false)
	mustSync(t, phone)

	cs, err := phone.Conflicts()
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 1 {
		t.Fatalf("conflicts: %+v, want one on cart/meta", cs)
	}
	c := cs[0]
	if len(c.Fields) != 1 || c.Fields[0].Path != "note" || string(c.Fields[0].Local.GetScalar()) != `"ring twice"` || string(c.Fields[0].Remote.GetScalar()) != `"leave at the door"` {
		t.Fatalf("fields %+v, want only note, ring twice against leave at the door", c.Fields)
	}
	var merged cartMeta
	if err := json.Unmarshal(c.Merged.GetScalar(), &merged); err != nil {
		t.Fatal(err)
	}
	if want := (cartMeta{Note: "leave at the door", Deliver: "friday"}); merged != want {
		t.Errorf("merged %+v, want %+v", merged, want)
	}

	if err := phone.SettleFields("cart/meta", map[string]client.Side{"deliver": client.KeepLocal}); err == nil {
		t.Error("settling a field that does not conflict succeeded")
	}
	if err := phone.SettleFields("cart/meta", map[string]client.Side{"note": client.KeepLocal}); err != nil {
		t.Fatal(err)
	}
	mustSync(t, phone)
	mustSync(t, laptop)
	want := cartMeta{Note: "ring twice", Deliver: "friday"}
	for _, r := range []*client.Replica{phone, laptop} {
		var got cartMeta
		if err := r.GetJSON("cart/meta", &got); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("%s: cart/meta = %+v, want %+v: the delivery day nobody conflicted on must stay", r.Path(), got, want)
		}
	}
	if st := phone.Status(); st.Conflicts != 0 {
		t.Errorf("%d conflicts left", st.Conflicts)
	}
	requireSame(t, srv, "jill", phone, laptop)
}

// TestSettleFieldsOneAtATime settles two conflicting fields in two calls:
// the first leaves the other in the inbox.
func TestSettleFieldsOneAtATime(t *testing.T) {
	srv := startServer(t)
	a, net := device(t, srv, "a.db", "kim", client.Options{Resolver: client.MergeJSON})
	b, _ := device(t, srv, "b.db", "kim", client.Options{Resolver: client.MergeJSON})
	net.set(true)
	if err := a.PutJSON("m", map[string]any{"x": 1, "y": map[string]any{"z": "a"}, "only": "a"}); err != nil {
		t.Fatal(err)
	}
	if err := b.PutJSON("m", map[string]any{"x": 2, "y": map[string]any{"z": "b"}, "w": "b"}); err != nil {
		t.Fatal(err)
	}
	mustSync(t, b)
	net.set(false)
	mustSync(t, a)
	if err := a.SettleFields("m", map[string]client.Side{"y.z": client.KeepLocal}); err != nil {
		t.Fatal(err)
	}
	cs, err := a.Conflicts()
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 1 || len(cs[0].Fields) != 1 || cs[0].Fields[0].Path != "x" {
		t.Fatalf("after settling y.z: %+v, want x alone left", cs)
	}
	if err := a.SettleFields("m", map[string]client.Side{"x": client.KeepRemote}); err != nil {
		t.Fatal(err)
	}
	mustSync(t, a)
	var got map[string]any
	if err := a.GetJSON("m", &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"x": 2.0, "y": map[string]any{"z": "a"}, "only": "a", "w": "b"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("m = %v, want %v", got, want)
	}
}
