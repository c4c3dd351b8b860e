package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// getFrom reads path from a running tcptrace closewait --listen at addr
// (host:port or URL), the --from of kill and top, and hands the body of an
// OK answer to read, with the URL for its errors.
func getFrom(ctx context.Context, addr, path string, timeout time.Duration, read func(url string, body io.Reader) error) error {
	url := addr
	if !strings.Contains(url, "://") {
		url = "http://" + url
	}
	url = strings.TrimSuffix(url, "/") + path
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return usagef("--from %q: %v", addr, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("--from %s: %w (is tcptrace closewait --listen running there?)", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("--from %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return read(url, resp.Body)
}
