package events

import _ "embed"

// Schema is the JSON Schema (draft 2020-12) of one output line.
//
//go:embed schema.json
var Schema []byte
