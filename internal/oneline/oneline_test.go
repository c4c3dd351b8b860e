package oneline

import (
	"errors"
	"io"
	"os"
	"strings"
	"testing"
)

func TestJoin(t *testing.T) {
	if Join() != nil || Join(nil, nil) != nil {
		t.Error("Join of nils is not nil")
	}
	if err := Join(nil, io.EOF); err != io.EOF {
		t.Errorf("Join(nil, EOF) = %v, want EOF itself", err)
	}
	err := Join(io.EOF, errors.Join(os.ErrClosed, os.ErrNotExist))
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("joined error spans lines: %q", err)
	}
	if !errors.Is(err, io.EOF) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("joined error does not wrap its parts: %v", err)
	}
}
