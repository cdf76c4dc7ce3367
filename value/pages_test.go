package value

import (
	"testing"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
)

func TestPages(t *testing.T) {
	t.Parallel()
	type step struct {
		reset   bool
		horizon uint64
		restart bool   // Add's answer
		echo    uint64 // ResetHorizon after it
	}
	for _, tt := range []struct {
		name  string
		pages []step
	}{
		{"no reset", []step{{false, 4, false, 0}, {false, 4, false, 0}}},
		{"one reset across pages", []step{{true, 5, true, 5}, {true, 5, false, 5}, {true, 5, false, 5}}},
		{"reset then plain pages", []step{{true, 5, true, 5}, {false, 5, false, 5}}},
		{"the horizon moves", []step{{true, 5, true, 5}, {true, 9, true, 9}, {true, 9, false, 9}}},
		{"a reset after plain pages", []step{{false, 2, false, 0}, {true, 7, true, 7}}},
		{"a reset after the end of another", []step{{true, 5, true, 5}, {false, 5, false, 5}, {true, 8, true, 8}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var p Pages
			if got := p.ResetHorizon(); got != 0 {
				t.Fatalf("ResetHorizon() of the zero Pages = %d, want 0", got)
			}
			for i, s := range tt.pages {
				page := &dalvv1.SyncResponse{Reset_: s.reset, Horizon: s.horizon, More: i < len(tt.pages)-1}
				if got := p.Add(page); got != s.restart {
					t.Errorf("page %d: Add(reset %v, horizon %d) = %v, want %v", i, s.reset, s.horizon, got, s.restart)
				}
				if got := p.ResetHorizon(); got != s.echo {
					t.Errorf("page %d: ResetHorizon() = %d, want %d", i, got, s.echo)
				}
			}
		})
	}
}
