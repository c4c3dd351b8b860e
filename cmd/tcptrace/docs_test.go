package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/internal/docgen"
	"github.com/tcptrace/tcptrace/metrics"
)

// updateDocsEnv, set to 1 (make docs), writes the generated pages instead
// of checking them.
const updateDocsEnv = "TCPTRACE_UPDATE_DOCS"

// cliPage is docs/cli.md: the help of tcptrace and of each command, as
// the binary prints it.
func cliPage(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	b.WriteString(docgen.Banner)
	b.WriteString("# CLI reference\n\nThe help that `tcptrace` and each of its commands print (`tcptrace COMMAND --help`). " +
		"Every flag can also be set with the environment variable shown in brackets; a flag given on the command line wins. " +
		"Exit status: 0 success, 1 failure at run time, 2 bad usage (one line on stderr says why).\n")
	for _, args := range [][]string{{"--help"}, {"closewait", "--help"}, {"trace", "--help"}, {"top", "--help"}, {"kill", "--help"}, {"version", "--help"}} {
		var out bytes.Buffer
		if err := run(context.Background(), append([]string{"tcptrace"}, args...), &out, &out); err != nil {
			t.Fatalf("tcptrace %s: %v", strings.Join(args, " "), err)
		}
		title := "tcptrace"
		if len(args) > 1 {
			title += " " + args[0]
		}
		fmt.Fprintf(&b, "\n## %s\n\n```\n%s```\n", title, strings.TrimLeft(out.String(), "\n"))
	}
	return b.String()
}

// The generated reference pages (docs/cli.md, docs/events.md,
// docs/metrics.md) are what the code says now; make docs rewrites them.
func TestGeneratedDocs(t *testing.T) {
	requireRepository(t)
	ev, err := docgen.Events(events.Schema)
	if err != nil {
		t.Fatal(err)
	}
	pages := map[string]string{
		"cli.md":     cliPage(t),
		"events.md":  ev,
		"metrics.md": docgen.Metrics(metrics.Catalog()),
	}
	for name, want := range pages {
		path := filepath.Join("..", "..", "docs", name)
		if os.Getenv(updateDocsEnv) == "1" {
			if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != want {
			t.Errorf("docs/%s is stale (or missing: %v): run make docs", name, err)
		}
	}
}

// Every relative link of the README and docs/ leads somewhere.
func TestDocLinks(t *testing.T) {
	requireRepository(t)
	files, _ := filepath.Glob(filepath.Join("..", "..", "docs", "*.md"))
	files = append(files, filepath.Join("..", "..", "README.md"))
	for _, err := range docgen.CheckLinks(files) {
		t.Error(err)
	}
}

// requireRepository skips a check of the repository's files in the kernel
// matrix's VMs, which hold the test binaries only: CI runs it on the host
// (make check-docs).
func requireRepository(t *testing.T) {
	t.Helper()
	if os.Getenv(vmEnv) == "1" {
		t.Skip("a check of the repository's files: runs on the host (make check-docs), not in the kernel matrix's VMs")
	}
}
