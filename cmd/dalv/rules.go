package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/rules"
	"github.com/dalvdb/dalv/value"
)

// defaultRulesPoll is how often dalv serve looks at its rules file's
// modification time.
const defaultRulesPoll = 2 * time.Second

// loadRules compiles the rules file at path, naming the file in errors.
func loadRules(path string) (*rules.Set, os.FileInfo, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, nil, fmt.Errorf("rules file: %w", err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("rules file: %w", err)
	}
	s, err := rules.Parse(data)
	if err != nil {
		return nil, nil, fmt.Errorf("rules file %s:\n%w", path, err)
	}
	return s, fi, nil
}

// rulesReloader reloads dalv serve's rules file on SIGHUP and when its
// modification time or size changes; a file that does not compile keeps the
// rules in force and is logged and counted.
type rulesReloader struct {
	path     string
	log      *slog.Logger
	apply    func(*rules.Set)
	hash     func() string // of the rules in force
	info     *prometheus.GaugeVec
	failures prometheus.Counter
	reloads  prometheus.Counter
	seen     os.FileInfo
	hup      chan os.Signal
}

func newRulesReloader(path string, fi os.FileInfo, apply func(*rules.Set), hash func() string, reg prometheus.Registerer, log *slog.Logger) *rulesReloader {
	r := &rulesReloader{path: path, log: log, apply: apply, hash: hash, seen: fi,
		info: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "dalv_rules_info", Help: "1 for the hash of the write rules in force.",
		}, []string{"hash"}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "dalv_rules_reload_failures_total", Help: "Reloads of the rules file that failed and kept the rules in force.",
		}),
		reloads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "dalv_rules_reloads_total", Help: "Reloads of the rules file that put new rules in force.",
		}),
	}
	reg.MustRegister(r.info, r.failures, r.reloads)
	r.info.WithLabelValues(hash()).Set(1)
	// SIGHUP is caught from here on, so it never ends the server.
	r.hup = make(chan os.Signal, 1)
	signal.Notify(r.hup, syscall.SIGHUP)
	return r
}

// run reloads until ctx ends.
func (r *rulesReloader) run(ctx context.Context, poll time.Duration) {
	hup := r.hup
	defer signal.Stop(hup)
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			r.reload("SIGHUP")
		case <-t.C:
			fi, err := os.Stat(r.path)
			if err != nil {
				continue // reported when a reload reads it
			}
			if !fi.ModTime().Equal(r.seen.ModTime()) || fi.Size() != r.seen.Size() {
				r.reload("file changed")
			}
		}
	}
}

func (r *rulesReloader) reload(why string) {
	s, fi, err := loadRules(r.path)
	if fi != nil {
		r.seen = fi
	} else if st, serr := os.Stat(r.path); serr == nil {
		r.seen = st // do not retry a broken file until it changes again
	}
	if err != nil {
		r.failures.Inc()
		r.log.Error("rules reload failed; the rules in force are kept", "why", why, "err", err)
		return
	}
	r.apply(s)
	r.reloads.Inc()
	r.info.Reset()
	r.info.WithLabelValues(r.hash()).Set(1)
	r.log.Info("rules reloaded", "why", why, "hash", r.hash())
}

func newRulesCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rules",
		Short: "Check a write rules file, or run example writes against it (for CI)",
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "check FILE",
		Short: "Compile a rules file offline: print OK and its hash, or each error with its line",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, _, err := loadRules(args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "OK %s (%s)\n", args[0], s.Hash())
			return nil
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "test FILE CASES",
		Short: "Run the example writes of a cases file against a rules file; fail on any case whose outcome differs",
		Long: `Run example writes against a rules file and print which pass. CASES is
YAML (or JSON):

  cases:
    - name: a quantity of 3 is fine   # optional
      key: cart/qty/sku1
      op: put              # put (default), delete, list_add or list_remove
      value: 3             # JSON value: the scalar is its JSON text
      old: null            # the key's current scalar as a JSON value; absent: none
      old_list: ["a"]      # or its current list (elements as JSON text)
      list: ["a", "b"]     # put a list instead of a scalar
      writer: device       # or backend
      user: user1          # default user1
      claims: {plan: pro}
      expect: allow        # or refuse
      rule: "cart/qty/*"   # optional: a refusal must name this rule

A string value or element is written as its JSON text ("\"dark\""); give
raw: true to write strings as they are.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, _, err := loadRules(args[0])
			if err != nil {
				return err
			}
			data, err := os.ReadFile(args[1])
			if err != nil {
				return fmt.Errorf("cases file: %w", err)
			}
			return runRuleCases(cmd.OutOrStdout(), s, data)
		},
	})
	return cmd
}

// ruleCase is one example write of dalv rules test.
type ruleCase struct {
	Name    string         `yaml:"name"`
	Key     string         `yaml:"key"`
	Op      string         `yaml:"op"`
	Value   any            `yaml:"value"`
	Old     any            `yaml:"old"`
	OldList []any          `yaml:"old_list"`
	List    []any          `yaml:"list"`
	Raw     bool           `yaml:"raw"`
	Writer  string         `yaml:"writer"`
	User    string         `yaml:"user"`
	Claims  map[string]any `yaml:"claims"`
	Expect  string         `yaml:"expect"`
	Rule    string         `yaml:"rule"`
	hasOld  bool
}

func (c *ruleCase) UnmarshalYAML(n *yaml.Node) error {
	type plain ruleCase
	if err := n.Decode((*plain)(c)); err != nil {
		return err
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == "old" {
			c.hasOld = true
		}
	}
	return nil
}

func runRuleCases(out io.Writer, s *rules.Set, data []byte) error {
	var file struct {
		Cases []ruleCase `yaml:"cases"`
	}
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	dec.KnownFields(true)
	if err := dec.Decode(&file); err != nil {
		return fmt.Errorf("cases file: %w", err)
	}
	failed := 0
	for i, c := range file.Cases {
		name := c.Name
		if name == "" {
			op := c.Op
			if op == "" {
				op = "put"
			}
			name = fmt.Sprintf("case %d (%s %s)", i+1, op, c.Key)
		}
		err := runRuleCase(s, c)
		var refusal *rules.Error
		refused := errors.As(err, &refusal)
		if err != nil && !refused {
			fmt.Fprintf(out, "FAIL %s: %v\n", name, err)
			failed++
			continue
		}
		switch {
		case c.Expect == "allow" && !refused:
			fmt.Fprintf(out, "ok   %s: allowed\n", name)
		case c.Expect == "refuse" && refused && (c.Rule == "" || c.Rule == refusal.Rule):
			fmt.Fprintf(out, "ok   %s: refused: %v\n", name, err)
		case refused:
			fmt.Fprintf(out, "FAIL %s: expected %s%s, got refused: %v\n", name, c.Expect, ruleNote(c.Rule), err)
			failed++
		default:
			fmt.Fprintf(out, "FAIL %s: expected refuse%s, got allowed\n", name, ruleNote(c.Rule))
			failed++
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d cases failed", failed, len(file.Cases))
	}
	fmt.Fprintf(out, "all %d cases pass\n", len(file.Cases))
	return nil
}

func ruleNote(rule string) string {
	if rule == "" {
		return ""
	}
	return fmt.Sprintf(" by rule %q", rule)
}

func runRuleCase(s *rules.Set, c ruleCase) error {
	if c.Expect != "allow" && c.Expect != "refuse" {
		return fmt.Errorf("expect must be allow or refuse, not %q", c.Expect)
	}
	if c.Key == "" {
		return errors.New("missing key")
	}
	enc := func(v any) ([]byte, error) {
		if str, ok := v.(string); ok && c.Raw {
			return []byte(str), nil
		}
		return json.Marshal(v)
	}
	encAll := func(vs []any) ([][]byte, error) {
		out := make([][]byte, len(vs))
		for i, v := range vs {
			b, err := enc(v)
			if err != nil {
				return nil, err
			}
			out[i] = b
		}
		return out, nil
	}
	var old *dalvv1.Value
	switch {
	case c.OldList != nil:
		items, err := encAll(c.OldList)
		if err != nil {
			return err
		}
		old = value.List(items...)
	case c.hasOld && c.Old != nil:
		b, err := enc(c.Old)
		if err != nil {
			return err
		}
		old = value.Scalar(b)
	}
	op := &dalvv1.Op{Key: c.Key}
	switch c.Op {
	case "", "put":
		op.Kind = dalvv1.OpKind_OP_KIND_PUT
		if c.List != nil {
			items, err := encAll(c.List)
			if err != nil {
				return err
			}
			op.Value = value.List(items...)
		} else {
			b, err := enc(c.Value)
			if err != nil {
				return err
			}
			op.Value = value.Scalar(b)
		}
	case "delete":
		op.Kind = dalvv1.OpKind_OP_KIND_DELETE
	case "list_add", "list_remove":
		op.Kind = dalvv1.OpKind_OP_KIND_LIST_ADD
		if c.Op == "list_remove" {
			op.Kind = dalvv1.OpKind_OP_KIND_LIST_REMOVE
		}
		b, err := enc(c.Value)
		if err != nil {
			return err
		}
		op.Value = value.Scalar(b)
	default:
		return fmt.Errorf("op must be put, delete, list_add or list_remove, not %q", c.Op)
	}
	writer := rules.Device
	switch c.Writer {
	case "", "device":
	case "backend":
		writer = rules.Backend
	default:
		return fmt.Errorf("writer must be device or backend, not %q", c.Writer)
	}
	user := c.User
	if user == "" {
		user = "user1"
	}
	return s.CheckOp(op, old, writer, user, c.Claims)
}
