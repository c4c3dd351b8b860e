package docgen

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

var (
	linkRE    = regexp.MustCompile(`\]\(([^)\s]+)(?:\s+"[^"]*")?\)`)
	headingRE = regexp.MustCompile(`^#{1,6}\s+(.*?)\s*#*\s*$`)
	slugDrop  = regexp.MustCompile(`[^\p{L}\p{N} _-]`)
	inlineRE  = regexp.MustCompile("`([^`]*)`")
)

// Slug is GitHub's anchor for a heading: lower case, punctuation dropped,
// spaces made dashes.
func Slug(heading string) string {
	h := inlineRE.ReplaceAllString(heading, "$1")
	h = strings.ToLower(slugDrop.ReplaceAllString(h, ""))
	return strings.ReplaceAll(h, " ", "-")
}

// markdown is one page: its links and the anchors of its headings, outside
// fenced code.
type markdown struct {
	links   []link
	anchors map[string]bool
}

type link struct {
	line   int
	target string
}

func parse(path string) (*markdown, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	md := &markdown{anchors: map[string]bool{}}
	seen := map[string]int{}
	fenced := false
	for i, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "```") {
			fenced = !fenced
			continue
		}
		if fenced {
			continue
		}
		if m := headingRE.FindStringSubmatch(l); m != nil {
			s := Slug(m[1])
			if n := seen[s]; n > 0 {
				md.anchors[fmt.Sprintf("%s-%d", s, n)] = true
			} else {
				md.anchors[s] = true
			}
			seen[s]++
		}
		for _, m := range linkRE.FindAllStringSubmatch(inlineRE.ReplaceAllString(l, ""), -1) {
			md.links = append(md.links, link{i + 1, m[1]})
		}
	}
	return md, nil
}

// CheckLinks checks the relative links of the given markdown files: each
// must name a file or directory that exists, and an anchor must name a
// heading of the markdown page it points into. It returns one error per
// broken link.
func CheckLinks(files []string) []error {
	pages := map[string]*markdown{}
	page := func(p string) (*markdown, error) {
		if md, ok := pages[p]; ok {
			return md, nil
		}
		md, err := parse(p)
		pages[p] = md
		return md, err
	}
	var errs []error
	for _, f := range files {
		md, err := page(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, l := range md.links {
			t := l.target
			if strings.Contains(t, "://") || strings.HasPrefix(t, "mailto:") {
				continue
			}
			path, anchor, _ := strings.Cut(t, "#")
			target := f
			if path != "" {
				target = filepath.Join(filepath.Dir(f), path)
				if _, err := os.Stat(target); err != nil {
					errs = append(errs, fmt.Errorf("%s:%d: link to %s: no such file", f, l.line, t))
					continue
				}
			}
			if anchor == "" || !strings.HasSuffix(target, ".md") {
				continue
			}
			tm, err := page(target)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if !tm.anchors[anchor] {
				errs = append(errs, fmt.Errorf("%s:%d: link to %s: no heading #%s in %s", f, l.line, t, anchor, target))
			}
		}
	}
	return errs
}
