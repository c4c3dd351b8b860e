package docgen

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tcptrace/tcptrace/events"
)

// A field without a description fails the page, by name.
func TestEventsNeedDescriptions(t *testing.T) {
	if _, err := Events(events.Schema); err != nil {
		t.Fatalf("the real schema: %v", err)
	}
	doc := `{"description":"d","properties":{"time":{"type":"string","description":"t"}},"required":["time"],
		"oneOf":[{"$ref":"#/$defs/x"}],"$defs":{"socket":{"properties":{}},"holders":{"properties":{}},"owner":{"properties":{}},
		"x":{"description":"an event","properties":{"event":{"const":"x","description":"x"},"bare":{"type":"integer"}}}}}`
	_, err := Events([]byte(doc))
	if err == nil || !strings.Contains(err.Error(), "bare") {
		t.Errorf("a field with no description: %v, want an error naming it", err)
	}
}

func TestSlug(t *testing.T) {
	for in, want := range map[string]string{
		"The leak report: tcptrace top": "the-leak-report-tcptrace-top",
		"`stuck`":                       "stuck",
		"Kill, --older-than & co.":      "kill---older-than--co",
	} {
		if got := Slug(in); got != want {
			t.Errorf("Slug(%q) = %q, want %q", in, got, want)
		}
	}
}

// Broken links are found: a missing file, a missing heading; good ones
// and links in code are not reported.
func TestCheckLinks(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	b := write("b.md", "# Title\n## Two words\n## Two words\n")
	a := write("a.md", "see [b](b.md#two-words), [b again](b.md#two-words-1), [top](#here), [web](https://x.example/y)\n"+
		"# Here\n[gone](c.md) and [bad anchor](b.md#nope)\n```\n[in code](nothing.md)\n```\n`[inline](nothing.md)`\n")
	errs := CheckLinks([]string{a, b})
	var got []string
	for _, e := range errs {
		got = append(got, e.Error())
	}
	if len(errs) != 2 || !strings.Contains(got[0], "c.md: no such file") || !strings.Contains(got[1], "no heading #nope") {
		t.Errorf("errors %q, want c.md missing and #nope missing", got)
	}
}
