package tui

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// screen is a small terminal emulator, enough for bubbletea's renderer (a
// cell-diffing one, like curses): printing with deferred wrap (DECAWM, 7)
// and insert mode (IRM, 4), CR, LF, BS, HT (tab stops every 8), IND, NEL,
// RI, the scrolling region (DECSTBM) and scrolling (SU, SD), cursor moves
// (CUP, HVP, CUU, CUD, CUF, CUB, CNL, CPL, CHA, HPA, VPA, CHT, CBT) and
// saves (DECSC, DECRC, SCOSC, SCORC), erase (ED, EL, ECH), editing (ICH,
// DCH, IL, DL), repeat (REP), the alternate screen (1049, 1047, 47) and
// the cursor's visibility (25). It keeps the other private modes, the
// Kitty keyboard protocol's stack of each screen and modifyOtherKeys, to
// check that a program restores them. Colours are ignored; OSC, DCS, APC,
// PM and SOS strings are skipped; requests (DECRQM, the Kitty keyboard
// query) are ignored. Any other sequence is counted in unknown: a test
// fails on it rather than trust a screen that may be wrong.
type screen struct {
	w, h          int
	main, alt     [][]rune
	x, y          int
	wrap          bool // a printed rune reached the last column
	top, bottom   int  // the scrolling region's lines
	autowrap      bool
	insert        bool
	last          rune // the last printed rune, for REP
	altActive     bool
	cursorVisible bool
	savedX        int
	savedY        int

	modes   map[int]bool // the private modes (but 7, 25, 47, 1047, 1049) set or reset
	kitty   [2]int       // the Kitty keyboard protocol's stack depth of the main and alternate screen
	kittyLo [2]int       // its lowest: below 0 pops an entry the program did not push
	mok     int          // modifyOtherKeys
	unknown map[string]int

	pending []byte // an incomplete sequence or rune
}

func newScreen(w, h int) *screen {
	s := &screen{w: w, h: h, cursorVisible: true, autowrap: true, bottom: h - 1,
		modes: map[int]bool{}, unknown: map[string]int{}}
	s.main, s.alt = grid(w, h), grid(w, h)
	return s
}

func grid(w, h int) [][]rune {
	g := make([][]rune, h)
	for i := range g {
		g[i] = blank(w)
	}
	return g
}

func blank(w int) []rune { return []rune(strings.Repeat(" ", w)) }

func (s *screen) active() [][]rune {
	if s.altActive {
		return s.alt
	}
	return s.main
}

// resize changes the size, keeping what fits; the scrolling region is the
// whole screen again (as in xterm).
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
	s.top, s.bottom = 0, h-1
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

// restored says how the terminal is not as a program found it: "" when
// it is (the main screen, the cursor shown, autowrap and replace mode,
// the whole screen scrolling, every private mode it set reset, the
// keyboard protocols as they were, no unknown sequence).
func (s *screen) restored() string {
	var bad []string
	if s.altActive {
		bad = append(bad, "on the alternate screen")
	}
	if !s.cursorVisible {
		bad = append(bad, "the cursor hidden")
	}
	if !s.autowrap {
		bad = append(bad, "autowrap off")
	}
	if s.insert {
		bad = append(bad, "insert mode")
	}
	if s.top != 0 || s.bottom != s.h-1 {
		bad = append(bad, fmt.Sprintf("scrolling region %d-%d", s.top+1, s.bottom+1))
	}
	var set []int
	for m, on := range s.modes {
		if on {
			set = append(set, m)
		}
	}
	if len(set) > 0 {
		slices.Sort(set)
		bad = append(bad, fmt.Sprintf("private modes %v set", set))
	}
	for i, name := range []string{"main", "alternate"} {
		if s.kitty[i] != 0 || s.kittyLo[i] < 0 {
			bad = append(bad, fmt.Sprintf("Kitty keyboard stack of the %s screen at %d (lowest %d)", name, s.kitty[i], s.kittyLo[i]))
		}
	}
	if s.mok != 0 {
		bad = append(bad, fmt.Sprintf("modifyOtherKeys %d", s.mok))
	}
	if len(s.unknown) > 0 {
		bad = append(bad, fmt.Sprintf("unknown sequences %v", s.unknown))
	}
	return strings.Join(bad, ", ")
}

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
	case c == '\n', c == '\v', c == '\f':
		s.index()
	case c == '\b':
		s.x, s.wrap = max(s.x-1, 0), false
	case c == '\t':
		s.tab(1)
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
		s.index()
	}
	row := s.active()[s.y]
	if s.insert {
		copy(row[s.x+1:], row[s.x:])
	}
	row[s.x] = r
	s.last = r
	switch {
	case s.x < s.w-1:
		s.x++
	case s.autowrap:
		s.wrap = true
	}
}

// index moves the cursor down a line, scrolling the region at its bottom.
func (s *screen) index() {
	s.wrap = false
	switch {
	case s.y == s.bottom:
		s.scroll(s.top, s.bottom, 1)
	case s.y < s.h-1:
		s.y++
	}
}

// reverseIndex moves the cursor up a line, scrolling the region down at
// its top.
func (s *screen) reverseIndex() {
	s.wrap = false
	switch {
	case s.y == s.top:
		s.scroll(s.top, s.bottom, -1)
	case s.y > 0:
		s.y--
	}
}

// scroll moves lines top..bottom up by n (down when n < 0), blank lines
// coming in.
func (s *screen) scroll(top, bottom, n int) {
	g := s.active()
	region := g[top : bottom+1]
	n = max(min(n, len(region)), -len(region))
	switch {
	case n > 0:
		copy(region, region[n:])
		for i := len(region) - n; i < len(region); i++ {
			region[i] = blank(s.w)
		}
	case n < 0:
		copy(region[-n:], region)
		for i := range -n {
			region[i] = blank(s.w)
		}
	}
}

// tab moves the cursor n tab stops (every 8 columns) on, back when n < 0.
func (s *screen) tab(n int) {
	s.wrap = false
	for ; n > 0; n-- {
		s.x = min((s.x/8+1)*8, s.w-1)
	}
	for ; n < 0; n++ {
		s.x = max((s.x-1)/8*8, 0)
	}
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
			if b[i] < 0x20 || b[i] > 0x7e {
				s.unknown[fmt.Sprintf("%q", b[:i+1])]++
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
	case '(', ')', '*', '+':
		if len(b) < 3 {
			return 0
		}
		return 3
	case '7':
		s.savedX, s.savedY = s.x, s.y
	case '8':
		s.x, s.y, s.wrap = s.savedX, s.savedY, false
	case 'D':
		s.index()
	case 'E':
		s.x = 0
		s.index()
	case 'M':
		s.reverseIndex()
	case '=', '>': // keypad modes
	default:
		s.unknown[fmt.Sprintf("%q", b[:2])]++
	}
	return 2
}

// csi handles CSI seq final: seq is the parameters, after a prefix (<, =,
// >, ?), and the intermediates.
func (s *screen) csi(seq string, final byte) {
	var prefix byte
	if seq != "" && strings.IndexByte("<=>?", seq[0]) >= 0 {
		prefix, seq = seq[0], seq[1:]
	}
	params, inter := seq, ""
	if i := strings.IndexFunc(seq, func(r rune) bool { return r >= 0x20 && r <= 0x2f }); i >= 0 {
		params, inter = seq[:i], seq[i:]
	}
	var ps []int
	if params != "" {
		for _, p := range strings.Split(params, ";") {
			n, err := strconv.Atoi(p)
			if err != nil {
				n = 0
			}
			ps = append(ps, n)
		}
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
		for x := max(from, 0); x < to && x < s.w; x++ {
			g[y][x] = ' '
		}
	}
	unknown := func() { s.unknown[fmt.Sprintf("CSI %c%s%s%c", max(prefix, ' '), params, inter, final)]++ }

	switch {
	case prefix == 0 && inter == "":
	case prefix == '?' && inter == "" && (final == 'h' || final == 'l'):
		s.privateModes(ps, final == 'h')
		return
	case prefix == '?' && inter == "$" && final == 'p': // DECRQM
		return
	case prefix == '?' && inter == "" && final == 'u': // the Kitty keyboard flags asked
		return
	case prefix == '?' && inter == "" && final == 'W' && arg(0, 0) == 5: // DECST8C
		return
	case prefix == '>' && inter == "" && final == 'u': // Kitty keyboard push
		s.kittyPush(1)
		return
	case prefix == '<' && inter == "" && final == 'u': // Kitty keyboard pop
		s.kittyPush(-arg(0, 1))
		return
	case prefix == '>' && inter == "" && final == 'm' && arg(0, 0) == 4: // modifyOtherKeys
		s.mok = 0
		if len(ps) > 1 {
			s.mok = ps[1]
		}
		return
	default:
		unknown()
		return
	}

	switch final {
	case 'm': // SGR
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
	case 'E':
		s.y, s.x = s.y+arg(0, 1), 0
		clamp()
	case 'F':
		s.y, s.x = s.y-arg(0, 1), 0
		clamp()
	case 'G', '`':
		s.x = arg(0, 1) - 1
		clamp()
	case 'd':
		s.y = arg(0, 1) - 1
		clamp()
	case 'I':
		s.tab(arg(0, 1))
	case 'Z':
		s.tab(-arg(0, 1))
	case 'K':
		switch arg(0, 0) {
		case 0:
			clear(s.y, s.x, s.w)
		case 1:
			clear(s.y, 0, s.x+1)
		case 2:
			clear(s.y, 0, s.w)
		}
		s.wrap = false
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
		s.wrap = false
	case 'X': // ECH
		clear(s.y, s.x, s.x+arg(0, 1))
		s.wrap = false
	case '@': // ICH
		row, n := g[s.y], min(arg(0, 1), s.w-s.x)
		copy(row[s.x+n:], row[s.x:])
		clear(s.y, s.x, s.x+n)
		s.wrap = false
	case 'P': // DCH
		row, n := g[s.y], min(arg(0, 1), s.w-s.x)
		copy(row[s.x:], row[s.x+n:])
		clear(s.y, s.w-n, s.w)
		s.wrap = false
	case 'L', 'M': // IL, DL
		if s.y < s.top || s.y > s.bottom {
			break
		}
		n := arg(0, 1)
		if final == 'L' {
			n = -n
		}
		s.scroll(s.y, s.bottom, n)
		s.x, s.wrap = 0, false
	case 'S': // SU
		s.scroll(s.top, s.bottom, arg(0, 1))
	case 'T': // SD
		if len(ps) > 1 { // mouse tracking
			unknown()
			break
		}
		s.scroll(s.top, s.bottom, -arg(0, 1))
	case 'r': // DECSTBM
		top, bottom := arg(0, 1)-1, min(arg(1, s.h), s.h)-1
		if top < bottom {
			s.top, s.bottom = top, bottom
			s.x, s.y, s.wrap = 0, 0, false
		}
	case 'b': // REP
		if s.last != 0 {
			for range arg(0, 1) {
				s.print(s.last)
			}
		}
	case 's':
		s.savedX, s.savedY = s.x, s.y
	case 'u':
		s.x, s.y, s.wrap = s.savedX, s.savedY, false
	case 'h', 'l':
		for _, p := range ps {
			if p != 4 {
				unknown()
				continue
			}
			s.insert = final == 'h'
		}
	default:
		unknown()
	}
}

func (s *screen) privateModes(ps []int, on bool) {
	for _, p := range ps {
		switch p {
		case 7:
			s.autowrap = on
			s.wrap = false
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
		default:
			s.modes[p] = on
		}
	}
}

// kittyPush pushes n entries on the active screen's Kitty keyboard stack
// (pops -n).
func (s *screen) kittyPush(n int) {
	i := 0
	if s.altActive {
		i = 1
	}
	s.kitty[i] += n
	s.kittyLo[i] = min(s.kittyLo[i], s.kitty[i])
}
