// Package oneline joins errors on a single line: tcptrace reports every
// error as one line on stderr.
package oneline

import "strings"

// Join returns nil if every err is nil, the only non-nil error as it is,
// or one error whose message lists them separated by "; ". The result
// wraps every non-nil error, as errors.Join does.
func Join(errs ...error) error {
	var kept []error
	for _, err := range errs {
		if err != nil {
			kept = append(kept, err)
		}
	}
	switch len(kept) {
	case 0:
		return nil
	case 1:
		return kept[0]
	}
	return joined(kept)
}

type joined []error

func (j joined) Error() string {
	msgs := make([]string, len(j))
	for i, err := range j {
		msgs[i] = strings.ReplaceAll(err.Error(), "\n", "; ")
	}
	return strings.Join(msgs, "; ")
}

func (j joined) Unwrap() []error { return j }
