package deploy

import (
	"embed"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"

	"sigs.k8s.io/yaml"
)

//go:embed prometheus/rules.yaml grafana/tcptrace.json
var queryFiles embed.FS

// Query is one PromQL expression of the rules or the dashboard.
type Query struct {
	// Source says where it is: "prometheus/rules.yaml: alert X" or
	// "grafana/tcptrace.json: panel T" or "...: variable V".
	Source string
	Expr   string
}

// Queries returns every PromQL expression of the alerting rules
// (prometheus/rules.yaml) and of the Grafana dashboard
// (grafana/tcptrace.json): its panels' targets and its query variables.
func Queries() ([]Query, error) {
	rules, err := ruleQueries()
	if err != nil {
		return nil, err
	}
	dash, err := dashboardQueries()
	if err != nil {
		return nil, err
	}
	return append(rules, dash...), nil
}

// MetricNames returns the tcptrace_* metric names that the rules and the
// dashboard query, sorted, each once. They are the names of samples as a
// scrape in the text format shows them: a histogram's series carry their
// suffix (tcptrace_fin_to_close_seconds_bucket). A test against a real
// /metrics can check that each one is there.
func MetricNames() ([]string, error) {
	qs, err := Queries()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, q := range qs {
		names = append(names, MetricNamesIn(q.Expr)...)
	}
	slices.Sort(names)
	return slices.Compact(names), nil
}

var (
	// Quoted strings (label values, regexes): not metric names.
	promqlString = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	tcptraceName = regexp.MustCompile(`(?:^|[^A-Za-z0-9_:])(tcptrace_[A-Za-z0-9_:]+)`)
)

// MetricNamesIn returns the tcptrace_* names in a PromQL expression, in
// order of appearance, outside quoted strings.
func MetricNamesIn(expr string) []string {
	expr = promqlString.ReplaceAllString(expr, `""`)
	var names []string
	for _, m := range tcptraceName.FindAllStringSubmatch(expr, -1) {
		names = append(names, m[1])
	}
	return names
}

func ruleQueries() ([]Query, error) {
	const name = "prometheus/rules.yaml"
	data, err := queryFiles.ReadFile(name)
	if err != nil {
		return nil, err
	}
	var f struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Alert  string `json:"alert"`
				Record string `json:"record"`
				Expr   string `json:"expr"`
			} `json:"rules"`
		} `json:"groups"`
	}
	// Not strict: the test of the rules is; here only the expressions count.
	if err := yaml.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	var qs []Query
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			what := "alert " + r.Alert
			if r.Record != "" {
				what = "record " + r.Record
			}
			qs = append(qs, Query{Source: name + ": " + what, Expr: r.Expr})
		}
	}
	return qs, nil
}

func dashboardQueries() ([]Query, error) {
	const name = "grafana/tcptrace.json"
	data, err := queryFiles.ReadFile(name)
	if err != nil {
		return nil, err
	}
	var d struct {
		Panels     []json.RawMessage `json:"panels"`
		Templating struct {
			List []struct {
				Name  string          `json:"name"`
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	var qs []Query
	var panel func(raw json.RawMessage) error
	panel = func(raw json.RawMessage) error {
		var p struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
			Panels []json.RawMessage `json:"panels"` // a collapsed row's
		}
		if err := json.Unmarshal(raw, &p); err != nil {
			return err
		}
		for _, t := range p.Targets {
			if t.Expr != "" {
				qs = append(qs, Query{Source: name + ": panel " + p.Title, Expr: t.Expr})
			}
		}
		for _, sub := range p.Panels {
			if err := panel(sub); err != nil {
				return err
			}
		}
		return nil
	}
	for _, p := range d.Panels {
		if err := panel(p); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		// A query is an object with a query field, or (older) a string.
		var q struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &q); err != nil {
			if err := json.Unmarshal(v.Query, &q.Query); err != nil {
				return nil, fmt.Errorf("%s: variable %s: %w", name, v.Name, err)
			}
		}
		qs = append(qs, Query{Source: name + ": variable " + v.Name, Expr: q.Query})
	}
	return qs, nil
}
