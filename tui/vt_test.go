package tui

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// screen is a small terminal emulator, enough for bubbletea's renderer:
// printing with deferred wrap, CR, LF (scrolling), cursor moves (CUP, CUU,
// CUD, CUF, CUB, CHA, VPA), erase (ED, EL), the alternate screen (1049,
// 1047, 47) and the cursor's visibility (25). Colours and other modes are
// ignored; OSC, DCS, APC, PM and SOS strings are skipped.
type screen struct {
	w, h          int
	main, alt     [][]rune
	x, y          int
	wrap          bool // a printed rune reached the last column
	altActive     bool
	cursorVisible bool
	savedX        int
	savedY        int
	pending       []byte // an incomplete sequence or rune
}

func newScreen(w, h int) *screen {
	s := &screen{w: w, h: h, cursorVisible: true}
	s.main, s.alt = grid(w, h), grid(w, h)
	return s
}

func grid(w, h int) [][]rune {
	g := make([][]rune, h)
	for i := range g {
		g[i] = []rune(strings.Repeat(" ", w))
	}
	return g
}

func (s *screen) active() [][]rune {
	if s.altActive {
		return s.alt
	}
	return s.main
}

// resize changes the size, keeping what fits.
func (s *screen) resize(w, h int) {
	re := func(g [][]rune) [][]rune {
		n := grid(w, h)
		for y := 0; y < min(h, len(g)); y++ {
			copy(n[y], g[y])
		}
		return n
	}
	s.main, s.alt = re(s.main), re(s.alt)
	s.w, s.h = w, h
	s.x, s.y = min(s.x, w-1), min(s.y, h-1)
	s.wrap = false
}

// lines is the active screen's text, trailing blanks cut.
func (s *screen) lines() []string {
	g := s.active()
	out := make([]string, len(g))
	for i, l := range g {
		out[i] = strings.TrimRight(string(l), " ")
	}
	return out
}

func (s *screen) String() string { return strings.Join(s.lines(), "\n") }

func (s *screen) Write(p []byte) (int, error) {
	b := append(s.pending, p...)
	s.pending = nil
	for len(b) > 0 {
		n := s.step(b)
		if n == 0 { // incomplete: wait for more
			s.pending = append([]byte(nil), b...)
			break
		}
		b = b[n:]
	}
	return len(p), nil
}

// step consumes one rune, control or sequence of b, and says how many
// bytes; 0 when b holds only its beginning.
func (s *screen) step(b []byte) int {
	switch c := b[0]; {
	case c == 0x1b:
		return s.escape(b)
	case c == '\r':
		s.x, s.wrap = 0, false
	case c == '\n':
		s.lineFeed()
	case c == '\b':
		s.x, s.wrap = max(s.x-1, 0), false
	case c == '\t':
		s.x = min((s.x/8+1)*8, s.w-1)
	case c < 0x20 || c == 0x7f:
		// BEL and others: nothing to show
	default:
		if !utf8.FullRune(b) {
			return 0
		}
		r, n := utf8.DecodeRune(b)
		s.print(r)
		return n
	}
	return 1
}

func (s *screen) print(r rune) {
	if s.wrap {
		s.x, s.wrap = 0, false
		s.lineFeed()
	}
	s.active()[s.y][s.x] = r
	if s.x == s.w-1 {
		s.wrap = true
	} else {
		s.x++
	}
}

func (s *screen) lineFeed() {
	s.wrap = false
	if s.y < s.h-1 {
		s.y++
		return
	}
	g := s.active()
	copy(g, g[1:])
	g[len(g)-1] = []rune(strings.Repeat(" ", s.w))
}

// escape handles ESC ...: CSI, strings (OSC, DCS, …) and short escapes.
func (s *screen) escape(b []byte) int {
	if len(b) < 2 {
		return 0
	}
	switch b[1] {
	case '[':
		for i := 2; i < len(b); i++ {
			if b[i] >= 0x40 && b[i] <= 0x7e {
				s.csi(string(b[2:i]), b[i])
				return i + 1
			}
		}
		return 0
	case ']', 'P', '_', '^', 'X':
		for i := 2; i < len(b); i++ {
			if b[i] == 0x07 {
				return i + 1
			}
			if b[i] == 0x1b && i+1 < len(b) && b[i+1] == '\\' {
				return i + 2
			}
		}
		return 0
	case '(', ')', '*', '+', '#':
		if len(b) < 3 {
			return 0
		}
		return 3
	case '7':
		s.savedX, s.savedY = s.x, s.y
	case '8':
		s.x, s.y = s.savedX, s.savedY
	case 'M': // reverse index
		s.y = max(s.y-1, 0)
	}
	return 2
}

func (s *screen) csi(params string, final byte) {
	private := strings.HasPrefix(params, "?")
	params = strings.TrimLeft(params, "?<=>")
	var ps []int
	for _, p := range strings.Split(params, ";") {
		n, err := strconv.Atoi(p)
		if err != nil {
			n = 0
		}
		ps = append(ps, n)
	}
	arg := func(i, def int) int {
		if i < len(ps) && ps[i] > 0 {
			return ps[i]
		}
		return def
	}
	clamp := func() {
		s.x, s.y = max(min(s.x, s.w-1), 0), max(min(s.y, s.h-1), 0)
		s.wrap = false
	}
	g := s.active()
	clear := func(y, from, to int) {
		for x := from; x < to && x < s.w; x++ {
			g[y][x] = ' '
		}
	}
	switch final {
	case 'H', 'f':
		s.y, s.x = arg(0, 1)-1, arg(1, 1)-1
		clamp()
	case 'A':
		s.y -= arg(0, 1)
		clamp()
	case 'B':
		s.y += arg(0, 1)
		clamp()
	case 'C':
		s.x += arg(0, 1)
		clamp()
	case 'D':
		s.x -= arg(0, 1)
		clamp()
	case 'G':
		s.x = arg(0, 1) - 1
		clamp()
	case 'd':
		s.y = arg(0, 1) - 1
		clamp()
	case 'K':
		switch arg(0, 0) {
		case 0:
			clear(s.y, s.x, s.w)
		case 1:
			clear(s.y, 0, s.x+1)
		case 2:
			clear(s.y, 0, s.w)
		}
	case 'J':
		switch arg(0, 0) {
		case 0:
			clear(s.y, s.x, s.w)
			for y := s.y + 1; y < s.h; y++ {
				clear(y, 0, s.w)
			}
		case 1:
			for y := 0; y < s.y; y++ {
				clear(y, 0, s.w)
			}
			clear(s.y, 0, s.x+1)
		case 2, 3:
			for y := 0; y < s.h; y++ {
				clear(y, 0, s.w)
			}
		}
	case 'h', 'l':
		if !private {
			return
		}
		on := final == 'h'
		for _, p := range ps {
			switch p {
			case 25:
				s.cursorVisible = on
			case 47, 1047, 1049:
				if on == s.altActive {
					continue
				}
				if on {
					s.savedX, s.savedY = s.x, s.y
					s.alt = grid(s.w, s.h)
				} else {
					s.x, s.y = s.savedX, s.savedY
				}
				s.altActive = on
				s.wrap = false
			}
		}
	}
}
