// Package schemacheck validates output lines against events/schema.json in
// tests.
package schemacheck

import (
	"bytes"
	"strings"
	"sync"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/tcptrace/tcptrace/events"
)

var compiled = sync.OnceValues(func() (*jsonschema.Schema, error) {
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(events.Schema))
	if err != nil {
		return nil, err
	}
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	if err := c.AddResource("schema.json", doc); err != nil {
		return nil, err
	}
	return c.Compile("schema.json")
})

// Line checks one output line against events/schema.json.
func Line(tb testing.TB, line string) error {
	tb.Helper()
	sch, err := compiled()
	if err != nil {
		tb.Fatalf("compile events/schema.json: %v", err)
	}
	inst, err := jsonschema.UnmarshalJSON(strings.NewReader(line))
	if err != nil {
		return err
	}
	return sch.Validate(inst)
}
